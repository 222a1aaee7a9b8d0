"""The node's registry of workflow files (node.workflow_registry) on a real node: files of
its workflows folder are registered at start, listed and run by id over control; hostile
files are skipped with a reason and the node serves; a sub-workflow step runs its child
(``<parent>.<step>``) and a restart re-attaches to it; ``at_start`` runs once per start and an
``every`` schedule runs the latest missed slot only, after a restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from node.daemon import Node
from node.home import Home
from node.p2p import P2PHost
from protocols import control
from protocols.errors import PeerErrorResponse
from protocols.stream import MessageStream
from tests import hostile_workflows
from tests.integration.harness import launch, make_node, swarm_key, wait_until
from workflows.schedule import slot_run_id

pytestmark = pytest.mark.usefixtures("ray_cluster")

SHOUT = """\
id: shout
description: Upper-case a text.
inputs:
  - name: text
    default: hello
steps:
  - name: up
    tool: text.upper
    inputs: [{name: text, value: "{{inputs.text}}"}]
outputs: [{name: shouted, value: "{{steps.up.outputs.result}}"}]
"""
PARENT = """\
id: parent
inputs: [{name: word}]
steps:
  - name: loud
    workflow: shout
    inputs: [{name: text, value: "{{inputs.word}}"}]
outputs: [{name: result, value: "{{steps.loud.outputs.shouted}}"}]
"""
STARTUP = """\
id: startup
run: {at_start: true}
steps: [{name: up, tool: text.upper, inputs: [{name: text, value: up}]}]
"""
FILES = {
    "shout.yaml": SHOUT,
    "parent.yml": PARENT,
    "startup.yaml": STARTUP,
    "bad.yaml": "id: bad\nsteps: [\n",
    "zdup.yaml": SHOUT.replace("Upper-case", "Another"),
    "loop.yaml": "id: loop\nsteps: [{name: again, workflow: loop}]\n",
    "needs.yaml": "id: needs\nrun: {every: 1h}\ninputs: [{name: x}]\n"
    "steps: [{name: up, tool: text.upper, inputs: [{name: text, value: '{{inputs.x}}'}]}]\n",
    "big.yaml": "id: big\n# " + "x" * 5000 + "\nsteps: [{name: s, tool: text.upper}]\n",
    "notes.txt": "not a workflow",
    "large.yaml": "id: large\ninputs:\n  - {name: blob, default: '" + "x" * 2000 + "'}\n"
    "  - {name: deep, default: " + "[" * 12 + "]" * 12 + "}\n  - {name: small, default: [1]}\n"
    "steps: [{name: s, tool: text.upper, inputs: [{name: text, value: x}]}]\n",
}


class Client:
    def __init__(self, host: P2PHost, peer: str) -> None:
        self.host, self.peer = host, peer

    async def ask(
        self, message: Any, timeout_s: float = 60, protocol: str = control.PROTOCOL_ID
    ) -> Any:
        ms = MessageStream(await self.host.open_stream(self.peer, protocol), control.RESPONSE_CODEC)
        try:
            await ms.send(message)
            while True:
                reply = await ms.receive_within(timeout_s)
                if not isinstance(reply, control.Heartbeat):
                    return reply
        finally:
            await ms.close()

    async def result(self, workflow_id: str) -> control.WorkflowResult:
        with trio.fail_after(60):
            reply = await self.ask(control.ResultRequest(workflow_id=workflow_id, wait=True))
        assert isinstance(reply, control.WorkflowResult)
        return reply


def registry_node(tmp: Path, folder: Path) -> Node:
    return make_node(
        tmp,
        "a",
        "text,util",
        workflows={"dirs": [str(folder)]},
        workflow_files={"max_bytes": 4096},
    )


async def test_registered_workflows_are_listed_run_by_id_and_hostile_files_skipped(
    tmp_path: Path,
):
    folder = tmp_path / "flows"
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(text)
    # and what an attacker would write (tests/hostile_workflows.py)
    (folder / "bomb.yaml").write_bytes(hostile_workflows.alias_bomb_in_default())
    (folder / "garbage.yaml").write_bytes(hostile_workflows.binary_garbage())
    (folder / "recursive.yaml").write_bytes(hostile_workflows.recursive_alias())
    node = registry_node(tmp_path, folder)
    async with trio.open_nursery() as nursery:
        scope = await launch(nursery, node)
        host = P2PHost(Home(tmp_path / "a").load_client_key(), swarm_key=swarm_key(tmp_path))
        async with host.run(["/ip4/127.0.0.1/tcp/0"]):
            client = Client(host, await host.connect_addr(node.host.addrs()[0]))
            listed = await client.ask(control.WorkflowsRequest())
            assert isinstance(listed, control.Workflows)
            assert [w.workflow for w in listed.workflows] == ["large", "parent", "shout", "startup"]
            by_id = {w.workflow: w for w in listed.workflows}
            assert [(i.name, i.default, i.default_omitted) for i in by_id["large"].inputs] == [
                ("blob", None, True),
                ("deep", None, True),
                ("small", [1], False),
            ]
            shout = by_id["shout"]
            assert (shout.description, shout.source, shout.schedule) == (
                "Upper-case a text.",
                str(folder / "shout.yaml"),
                None,
            )
            assert [(i.name, i.required, i.default) for i in shout.inputs] == [
                ("text", False, "hello")
            ]
            assert by_id["startup"].schedule == "at start"
            problems = {Path(p.source).name: p.error for p in listed.problems}
            assert sorted(problems) == [
                "bad.yaml",
                "big.yaml",
                "bomb.yaml",
                "garbage.yaml",
                "loop.yaml",
                "needs.yaml",
                "recursive.yaml",
                "zdup.yaml",
            ]
            assert "(workflow_files.max_" in problems["bomb.yaml"], problems["bomb.yaml"]
            assert "already registered from" in problems["zdup.yaml"]
            assert "larger than 4096 bytes" in problems["big.yaml"]
            assert "bad.yaml:" in problems["bad.yaml"]
            assert "makes workflow 'loop' run itself (loop -> loop)" in problems["loop.yaml"]
            assert "every input needs a default: 'x' has none" in problems["needs.yaml"]

            # run by id, with inputs; idempotent by the run's id
            run = control.RunRequest(workflow="shout", inputs={"text": "hi"}, workflow_id="s-1")
            started = await client.ask(run)
            assert (started.workflow_id, started.created) == ("s-1", True)
            assert (await client.result("s-1")).outputs == {"shouted": "HI"}
            again = await client.ask(run)
            assert (again.workflow_id, again.created) == ("s-1", False)
            with pytest.raises(PeerErrorResponse) as unknown:
                await client.ask(control.RunRequest(workflow="shuot"))
            assert unknown.value.code == "not_found"
            assert "did you mean 'shout'?" in unknown.value.message
            with pytest.raises(PeerErrorResponse) as missing:
                await client.ask(control.RunRequest(workflow="parent"))
            assert missing.value.code == "invalid_workflow"
            assert "needs a value for required input 'word'" in missing.value.message

            # a sub-workflow step: the child runs as <parent>.<step>
            await client.ask(
                control.RunRequest(workflow="parent", inputs={"word": "deep"}, workflow_id="p-1")
            )
            assert (await client.result("p-1")).outputs == {"result": "DEEP"}
            child = await client.result("p-1.loud")
            assert (child.status, child.outputs) == ("SUCCESSFUL", {"shouted": "DEEP"})
            status = await client.ask(control.StatusRequest(workflow_id="p-1"))
            assert status.steps[0].reason == "sub-workflow p-1.loud"

            # a submitted file naming an unknown or a recursive sub-workflow is refused
            for text, said in [
                (PARENT.replace("workflow: shout", "workflow: shuot"), "which is not registered"),
                (
                    "id: parent2\nsteps: [{name: s, workflow: parent2}]\n",
                    "makes workflow 'parent2' run itself",
                ),
            ]:
                with pytest.raises(PeerErrorResponse) as refused:
                    await client.ask(control.SubmitRequest(workflow=text, source="f.yaml"))
                assert refused.value.code == "invalid_workflow"
                assert said in refused.value.message and "f.yaml:" in refused.value.message

            # at_start: once at this start
            await wait_until(lambda: node.scheduler is not None and node.scheduler.started)
            assert node.scheduler is not None and node.scheduler.started == ["startup@start-1"]
            assert (await client.result("startup@start-1")).status == "SUCCESSFUL"
        scope.cancel()

        # restarted: at_start runs again (a second time in all), and the sub-workflow step of
        # a parent submitted again with its id re-attaches to its finished child
        again_node = registry_node(tmp_path, folder)
        scope = await launch(nursery, again_node)
        async with host.run(["/ip4/127.0.0.1/tcp/0"]):
            client = Client(host, await host.connect_addr(again_node.host.addrs()[0]))
            await wait_until(lambda: again_node.scheduler is not None)
            assert again_node.scheduler is not None
            assert again_node.scheduler.started == ["startup@start-2"]
            assert (await client.result("startup@start-2")).status == "SUCCESSFUL"
            listed = await client.ask(control.ListRequest())
            starts = sorted(w.workflow_id for w in listed.workflows if w.name == "startup")
            assert starts == ["startup@start-1", "startup@start-2"]
            redo = await client.ask(
                control.RunRequest(workflow="parent", inputs={"word": "deep"}, workflow_id="p-1")
            )
            assert redo.created is False
        scope.cancel()
        nursery.cancel_scope.cancel()


async def test_an_interval_schedule_runs_the_latest_missed_slot_only_after_a_restart(
    tmp_path: Path,
):
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "tick.yaml").write_text(
        "id: tick\nrun: {every: 1s}\n"
        "steps: [{name: key, tool: util.step_key}]\n"
        "outputs: [{name: key, value: '{{steps.key.outputs.result}}'}]\n"
    )
    async with trio.open_nursery() as nursery:
        node = registry_node(tmp_path, folder)
        scope = await launch(nursery, node)
        storage = node.storage

        def ticks() -> list[str]:
            return sorted(r.workflow_id for r in storage.list_workflows())

        await wait_until(lambda: len(ticks()) >= 2, timeout_s=20, what="two ticks")
        finished = [w for w in ticks() if storage.get_workflow(w).status == "SUCCESSFUL"]  # type: ignore[union-attr]
        scope.cancel()
        before = ticks()
        stopped = time.time()
        # down for at least three slots
        await wait_until(lambda: time.time() >= stopped + 3.2, what="three slots to pass")
        again = registry_node(tmp_path, folder)
        restarted = time.time()
        scope = await launch(nursery, again)
        ready = time.time()
        storage = again.storage
        assert again.scheduler is not None
        first = again.scheduler.started[0]
        # the one missed slot run at start is the latest before the scheduler started, not a
        # backlog: none of the slots between the stop and the restart ran
        latest = {slot_run_id("tick", s) for s in range(int(restarted), int(ready) + 1)}
        assert first in latest, (first, restarted, ready)
        missed = [
            slot_run_id("tick", s)
            for s in range(int(stopped) + 1, int(restarted))
            if slot_run_id("tick", s) not in before
        ]
        assert len(missed) >= 2 and not set(missed) & set(ticks()), (missed, ticks())
        # the runs that had finished before the restart were not run again
        assert finished
        for wid in finished:
            view = await again.workflows.view(wid)
            assert [(s.status, s.attempts) for s in view.steps] == [("SUCCESSFUL", 1)]
        await wait_until(lambda: len(again.scheduler.started) >= 2, timeout_s=10)
        scope.cancel()
        nursery.cancel_scope.cancel()


DOC = Path(__file__).resolve().parents[2] / "docs" / "workflows.md"


def documented(*ids: str) -> dict[str, str]:
    """The ```yaml blocks of docs/workflows.md whose id is one of ``ids``."""
    import re

    found = {}
    for block in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S):
        match = re.search(r"^id: (\S+)", block, flags=re.M)
        if match and match.group(1) in ids:
            found[match.group(1)] = block
    assert sorted(found) == sorted(ids)
    return found


async def test_the_examples_of_the_docs_register_and_run(tmp_path: Path):
    folder = tmp_path / "flows"
    folder.mkdir()
    for wid, text in documented("shout", "shout-twice", "heartbeat", "weekday-report").items():
        (folder / f"{wid}.yaml").write_text(text)
    node = registry_node(tmp_path, folder)
    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        host = P2PHost(Home(tmp_path / "a").load_client_key(), swarm_key=swarm_key(tmp_path))
        async with host.run(["/ip4/127.0.0.1/tcp/0"]):
            client = Client(host, await host.connect_addr(node.host.addrs()[0]))
            listed = await client.ask(control.WorkflowsRequest())
            assert listed.problems == []
            assert {w.workflow: w.schedule for w in listed.workflows} == {
                "heartbeat": "at start, every 10m",
                "shout": None,
                "shout-twice": None,
                "weekday-report": "cron '30 2 * * 1-5' (UTC)",
            }
            await client.ask(
                control.RunRequest(workflow="shout-twice", inputs={"text": "hi"}, workflow_id="t")
            )
            assert (await client.result("t")).outputs == {"shouted": "HI AGAIN"}
            assert (await client.result("t.first")).outputs == {"shouted": "HI"}
            beat = await client.result("heartbeat@start-1")
            assert beat.outputs == {"key": "heartbeat@start-1/key"}
            # a client of control 0.4.0 never sends them; one that does gets unknown_type
            with pytest.raises(PeerErrorResponse) as older:
                await client.ask(control.WorkflowsRequest(), protocol="/hivemesh/control/0.4.0")
            assert older.value.code == "unknown_type"
        nursery.cancel_scope.cancel()


SLOW = """\
id: slow
inputs: [{name: seconds, default: 3}]
steps: [{name: nap, tool: util.sleep, inputs: [{name: seconds, value: "{{inputs.seconds}}"}]}]
outputs: [{name: slept, value: "{{steps.nap.outputs.result}}"}]
"""
WAITS = """\
id: waits
inputs: [{name: seconds, default: 3}]
steps:
  - name: inner
    workflow: slow
    inputs: [{name: seconds, value: "{{inputs.seconds}}"}]
outputs: [{name: slept, value: "{{steps.inner.outputs.slept}}"}]
"""


async def test_a_restart_re_attaches_to_a_running_sub_workflow_and_a_cancel_reaches_it(
    tmp_path: Path,
):
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "slow.yaml").write_text(SLOW)
    (folder / "waits.yaml").write_text(WAITS)

    def running(node: Node, wid: str) -> bool:
        rows = node.storage.list_tasks(wid) if node.storage.get_workflow(wid) else []
        return any(r.status == "RUNNING" for r in rows)

    async with trio.open_nursery() as nursery:
        node = registry_node(tmp_path, folder)
        scope = await launch(nursery, node)
        host = P2PHost(Home(tmp_path / "a").load_client_key(), swarm_key=swarm_key(tmp_path))
        async with host.run(["/ip4/127.0.0.1/tcp/0"]):
            client = Client(host, await host.connect_addr(node.host.addrs()[0]))
            await client.ask(control.RunRequest(workflow="waits", workflow_id="w-1"))
            await wait_until(lambda: running(node, "w-1.inner"), what="the child running")
            child_row = node.storage.get_workflow("w-1.inner")
            assert child_row is not None
            assert child_row.user_metadata["parent"] == "w-1"
            assert child_row.user_metadata["depth"] == 1
        scope.cancel()  # the node stops while the child's step sleeps

        node = registry_node(tmp_path, folder)
        scope = await launch(nursery, node)
        async with host.run(["/ip4/127.0.0.1/tcp/0"]):
            client = Client(host, await host.connect_addr(node.host.addrs()[0]))
            assert (await client.result("w-1")).outputs == {"slept": 3}
            ids = sorted(r.workflow_id for r in node.storage.list_workflows())
            assert ids == ["w-1", "w-1.inner"]  # the same child, not a second one
            again = node.storage.get_workflow("w-1.inner")
            assert again is not None and again.created_at == child_row.created_at

            # canceling the outer workflow cancels the child
            await client.ask(
                control.RunRequest(workflow="waits", inputs={"seconds": 60}, workflow_id="w-2")
            )
            await wait_until(lambda: running(node, "w-2.inner"), what="the second child running")
            await client.ask(control.CancelRequest(workflow_id="w-2"))
            child = await client.result("w-2.inner")
            assert child.status == "CANCELED"
        nursery.cancel_scope.cancel()


async def test_sub_workflow_steps_with_foreach_and_retries(tmp_path: Path):
    folder = tmp_path / "flows"
    folder.mkdir()
    (folder / "shout.yaml").write_text(SHOUT)
    (folder / "flaky.yaml").write_text(
        "id: flaky\ninputs: [{name: path}]\n"
        "steps: [{name: try, tool: util.flaky, inputs: [{name: path, value: '{{inputs.path}}'}]}]\n"
        "outputs: [{name: calls, value: '{{steps.try.outputs.result}}'}]\n"
    )
    (folder / "each.yaml").write_text(
        "id: each\nsteps:\n  - name: loud\n    workflow: shout\n    foreach: [a, b, c]\n"
        "    inputs: [{name: text, value: '{{item}}'}]\n"
        "outputs: [{name: all, value: '{{steps.loud.outputs.shouted}}'}]\n"
    )
    (folder / "persist.yaml").write_text(
        "id: persist\ninputs: [{name: path}]\nsteps:\n  - name: again\n    workflow: flaky\n"
        "    retries: {max: 2, backoff: 0.1}\n"
        "    inputs: [{name: path, value: '{{inputs.path}}'}]\n"
        "outputs: [{name: calls, value: '{{steps.again.outputs.calls}}'}]\n"
    )
    node = registry_node(tmp_path, folder)
    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        host = P2PHost(Home(tmp_path / "a").load_client_key(), swarm_key=swarm_key(tmp_path))
        async with host.run(["/ip4/127.0.0.1/tcp/0"]):
            client = Client(host, await host.connect_addr(node.host.addrs()[0]))
            await client.ask(control.RunRequest(workflow="each", workflow_id="e"))
            assert (await client.result("e")).outputs == {"all": ["A", "B", "C"]}
            for i, letter in enumerate("ABC"):
                child = await client.result(f"e.loud[{i}]")
                assert child.outputs == {"shouted": letter}
            counter = tmp_path / "calls.txt"
            await client.ask(
                control.RunRequest(
                    workflow="persist", inputs={"path": str(counter)}, workflow_id="p"
                )
            )
            assert (await client.result("p")).outputs == {"calls": 2}
            assert (await client.result("p.again")).status == "FAILED"
            assert (await client.result("p.again~retry1")).outputs == {"calls": 2}
            assert counter.read_text().splitlines() == ["call", "call"]
        nursery.cancel_scope.cancel()
