"""A control submit is answered in bounded time even when creating the workflow is slow:
PENDING with the workflow's id, then status, result, cancel and a repeated submit all know
about the creation under way; a failed creation is reported, and a new submit retries it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from node.home import Home
from node.p2p import P2PHost
from node.workflow_service import WorkflowService
from protocols import control
from protocols.errors import PeerErrorResponse
from protocols.stream import MessageStream
from tests.integration.harness import launch, make_node, swarm_key, wait_until
from workflows.dsl import WorkflowSpec
from workflows.engine.storage import StorageError

pytestmark = pytest.mark.usefixtures("ray_cluster")

SHOUT = (
    "id: shout\nsteps:\n  - name: up\n    tool: text.upper\n"
    "    inputs: [{name: text, value: hello}]\n"
    "outputs: [{name: shouted, value: '{{steps.up.outputs.result}}'}]\n"
)


class GatedWorkflows:
    """The node's workflow service, with creations held until ``gate`` is set (and the ids
    in ``failing`` failing as a full disk would)."""

    def __init__(self, real: WorkflowService) -> None:
        self.real = real
        self.gate = trio.Event()
        self.failing: set[str] = set()

    async def submit(
        self,
        spec: WorkflowSpec,
        inputs: Mapping[str, Any],
        workflow_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[str, bool]:
        await self.gate.wait()
        if workflow_id in self.failing:
            self.failing.discard(workflow_id)
            raise StorageError("database or disk is full")
        return await self.real.submit(spec, inputs, workflow_id, metadata)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_a_slow_creation_is_answered_pending_and_then_found(tmp_path: Path):
    node = make_node(tmp_path, "a", "text", control={"submit_wait_s": 0.5})
    gated = GatedWorkflows(node.workflows)
    node.control.workflows = gated  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        host = P2PHost(Home(tmp_path / "a").load_client_key(), swarm_key=swarm_key(tmp_path))
        async with host.run(["/ip4/127.0.0.1/tcp/0"]):
            peer = await host.connect_addr(node.host.addrs()[0])

            async def ask(message: Any) -> Any:
                ms = MessageStream(
                    await host.open_stream(peer, control.PROTOCOL_ID), control.RESPONSE_CODEC
                )
                try:
                    await ms.send(message)
                    return await ms.receive_within(30)
                finally:
                    await ms.close()

            submit = control.SubmitRequest(workflow=SHOUT, workflow_id="slow-1")
            with trio.fail_after(15):  # parse + submit_wait_s, far from the client's 30 s
                first = await ask(submit)
            assert (first.workflow_id, first.status, first.created) == ("slow-1", "PENDING", True)
            status = await ask(control.StatusRequest(workflow_id="slow-1"))
            assert (status.status, status.name) == ("PENDING", "shout")
            assert [(s.name, s.tool, s.status) for s in status.steps] == [
                ("up", "text.upper", "PENDING")
            ]
            peek = await ask(control.ResultRequest(workflow_id="slow-1"))
            assert (peek.status, peek.outputs) == ("PENDING", None)
            again = await ask(submit)  # joins the creation under way
            assert (again.status, again.created) == ("PENDING", False)

            results: list[Any] = []

            async def wait_result() -> None:
                results.append(await ask(control.ResultRequest(workflow_id="slow-1", wait=True)))

            async with trio.open_nursery() as waiting:
                waiting.start_soon(wait_result)
                gated.gate.set()
            assert (results[0].status, results[0].outputs) == ("SUCCESSFUL", {"shouted": "HELLO"})
            last = await ask(submit)
            assert (last.status, last.created) == ("SUCCESSFUL", False)

            # a creation that fails after the client was told PENDING
            gated.gate = trio.Event()
            gated.failing.add("bad-1")
            bad = control.SubmitRequest(workflow=SHOUT, workflow_id="bad-1")
            assert (await ask(bad)).status == "PENDING"
            gated.gate.set()
            await wait_until(lambda: "bad-1" not in node.control._creations, what="the failure")
            for request in (
                control.StatusRequest(workflow_id="bad-1"),
                control.ResultRequest(workflow_id="bad-1", wait=True),
                control.CancelRequest(workflow_id="bad-1"),
            ):
                with pytest.raises(PeerErrorResponse) as info:
                    await ask(request)
                assert info.value.code == "internal"
                assert info.value.message == (
                    "workflow 'bad-1' was accepted but could not be created (StorageError: "
                    "database or disk is full); submit it again with the same id"
                )
            retried = await ask(bad)  # the same id, created this time
            assert (retried.workflow_id, retried.created) == ("bad-1", True)
            assert retried.status in ("RUNNING", "SUCCESSFUL")
        nursery.cancel_scope.cancel()


async def test_a_node_that_chooses_the_id_answers_it(tmp_path: Path):
    node = make_node(tmp_path, "a", "text", control={"submit_wait_s": 0})
    gated = GatedWorkflows(node.workflows)
    node.control.workflows = gated  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        host = P2PHost(Home(tmp_path / "a").load_client_key(), swarm_key=swarm_key(tmp_path))
        async with host.run(["/ip4/127.0.0.1/tcp/0"]):
            peer = await host.connect_addr(node.host.addrs()[0])
            ms = MessageStream(
                await host.open_stream(peer, control.PROTOCOL_ID), control.RESPONSE_CODEC
            )
            await ms.send(control.SubmitRequest(workflow=SHOUT))
            answer = await ms.receive_within(30)
            await ms.close()
            assert answer.status == "PENDING" and answer.created
            assert answer.workflow_id.startswith("shout-") and len(answer.workflow_id) == 18
            assert answer.workflow_id in node.control._creations
            gated.gate.set()
        nursery.cancel_scope.cancel()
