"""Trust, tried as an attacker would: a separate libp2p host with its own key speaking the
handoff protocol to real nodes (real libp2p, a real Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from node.handoff import HandoffCanceledError, cancel_handoff, delegate
from protocols import handoff
from tests.integration.harness import (
    LOOPBACK,
    launch_delegator,
    make_node,
    stranger_host,
    wait_until,
)
from workflows.dsl import parse_workflow
from workflows.status import WorkflowStatus

pytestmark = pytest.mark.usefixtures("ray_cluster")

SHOUT = """
id: confidential
steps:
  - name: shout
    tool: text.upper
    inputs: [{name: text, value: "{{inputs.text}}"}]
inputs:
  - name: text
outputs:
  - {name: shouted, value: "{{steps.shout.outputs.result}}"}
"""

NAP = """
id: nap
steps:
  - name: nap
    tool: util.sleep
    inputs: [{name: seconds, value: 2}]
  - name: echo
    tool: util.echo
    inputs: [{name: value, value: "honest {{steps.nap.outputs.result}}"}]
outputs:
  - {name: said, value: "{{steps.echo.outputs.result}}"}
"""


async def test_a_stranger_cannot_plant_a_result_under_a_guessed_handoff_id(
    tmp_path: Path,
) -> None:
    """Handoff ids are guessable (`<workflow>/<step>@<delegatee>`). A stranger offers that id
    first with its own arguments; the real delegator later gets its own run, not the
    stranger's stored result."""
    a = make_node(tmp_path, "a", "text")
    stranger = stranger_host()
    async with trio.open_nursery() as nursery, stranger.run(LOOPBACK):
        c, _ = await launch_delegator(nursery, tmp_path, a)
        wid = "confidential-1"
        hid = f"{wid}/shout@{a.peer_id}"
        await stranger.connect(a.peer_id, a.host.addrs())
        forged = handoff.Offer(
            handoff_id=hid,
            workflow_id=wid,
            step="shout",
            tool="text.upper",
            args={"text": "forged by a stranger"},
            deadline_ms=20_000,
        )
        with trio.fail_after(20):
            planted = await delegate(
                stranger, a.peer_id, forged, network=c.config.network, config=c.config.handoff
            )
        assert planted.outputs == {"result": "FORGED BY A STRANGER"}

        await c.workflows.submit(parse_workflow(SHOUT), {"text": "my sentence"}, wid)
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.outputs == {"shouted": "MY SENTENCE"}
        assert a.handoff.started_jobs == 2  # the stranger's run and the honest one
        mine = a.journal.get_handoff(hid, direction="in", peer=c.peer_id)
        theirs = a.journal.get_handoff(hid, direction="in", peer=stranger.peer_id)
        assert mine is not None and mine.outputs == {"result": "MY SENTENCE"}
        assert theirs is not None and theirs.outputs == {"result": "FORGED BY A STRANGER"}
        nursery.cancel_scope.cancel()


async def test_a_stranger_can_neither_cancel_nor_join_another_peers_handoff(
    tmp_path: Path,
) -> None:
    """While c's step runs on a, a stranger sends a lone ``cancel`` for its id (answered
    ``unknown_handoff``, nothing stops), then offers the same id and cancels that: it only
    ever reaches a handoff of its own; c's workflow ends SUCCESSFUL with c's result."""
    a = make_node(tmp_path, "a", "util")
    stranger = stranger_host()
    async with trio.open_nursery() as nursery, stranger.run(LOOPBACK):
        c, _ = await launch_delegator(nursery, tmp_path, a)
        net, cfg = c.config.network, c.config.handoff
        await stranger.connect(a.peer_id, a.host.addrs())
        wid, _ = await c.workflows.submit(parse_workflow(NAP), {}, "nap-1")
        hid = f"{wid}/nap@{a.peer_id}"
        await wait_until(lambda: a.handoff.running == 1, what="a running c's step")

        reply = await cancel_handoff(stranger, a.peer_id, hid, "mine", network=net, config=cfg)
        assert isinstance(reply, handoff.NotCanceled) and reply.code == "unknown_handoff"

        own = handoff.Offer(
            handoff_id=hid,
            workflow_id=wid,
            step="nap",
            tool="util.sleep",
            args={"seconds": 30},
            deadline_ms=60_000,
        )
        joined = trio.Event()

        async def offer_and_cancel() -> None:
            with pytest.raises(HandoffCanceledError):
                await delegate(stranger, a.peer_id, own, network=net, config=cfg)
            joined.set()

        nursery.start_soon(offer_and_cancel)
        await wait_until(lambda: a.handoff.running == 2, what="the stranger's own run")
        reply = await cancel_handoff(stranger, a.peer_id, hid, "mine", network=net, config=cfg)
        assert isinstance(reply, handoff.Canceled)
        with trio.fail_after(10):
            await joined.wait()

        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.outputs == {"said": "honest 2.0"}
        mine = a.journal.get_handoff(hid, direction="in", peer=c.peer_id)
        assert mine is not None and mine.status == "SUCCESSFUL"
        nursery.cancel_scope.cancel()
