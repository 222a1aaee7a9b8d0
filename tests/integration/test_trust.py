"""Trust, tried as an attacker would: a separate libp2p host with its own key speaking the
handoff protocol to real nodes (real libp2p, a real Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from node.daemon import Node
from node.handoff import HandoffCanceledError, HandoffRejectedError, cancel_handoff, delegate
from node.p2p import P2PHost
from protocols import discovery, handoff
from protocols.canonical import json_sha256
from protocols.stream import MessageStream
from protocols.wire import ErrorMessage
from tests.integration.harness import (
    LOOPBACK,
    launch,
    launch_delegator,
    make_node,
    member_host,
    wait_until,
)
from tests.integration.test_swarm import _ray_idle
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
    stranger = member_host(tmp_path)
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
        await wait_until(lambda: a.handoff.settled, what="both outcomes journaled")
        theirs = a.journal.get_handoff(hid, direction="in", peer=stranger.peer_id)
        # each delegator acknowledged its own result (so the outputs are dropped); the
        # receipts say which result each one got
        await wait_until(
            lambda: (
                (r := a.journal.get_handoff(hid, direction="in", peer=c.peer_id)) is not None
                and r.acked_at is not None
            ),
            what="c's ack",
        )
        mine = a.journal.get_handoff(hid, direction="in", peer=c.peer_id)
        assert mine is not None and mine.receipt is not None and mine.outputs is None
        assert mine.receipt["outputs_sha256"] == json_sha256({"result": "MY SENTENCE"})
        assert theirs is not None and theirs.receipt is not None
        assert theirs.receipt["outputs_sha256"] == json_sha256({"result": "FORGED BY A STRANGER"})
        nursery.cancel_scope.cancel()


async def test_a_stranger_can_neither_cancel_nor_join_another_peers_handoff(
    tmp_path: Path,
) -> None:
    """While c's step runs on a, a stranger sends a lone ``cancel`` for its id (answered
    ``unknown_handoff``, nothing stops), then offers the same id and cancels that: it only
    ever reaches a handoff of its own; c's workflow ends SUCCESSFUL with c's result."""
    a = make_node(tmp_path, "a", "util")
    stranger = member_host(tmp_path)
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
        await wait_until(lambda: a.handoff.settled, what="the outcome journaled")
        mine = a.journal.get_handoff(hid, direction="in", peer=c.peer_id)
        assert mine is not None and mine.status == "SUCCESSFUL"
        nursery.cancel_scope.cancel()


def _offer(hid: str, tool: str, args: dict[str, Any], **kw: Any) -> handoff.Offer:
    return handoff.Offer(
        handoff_id=hid,
        workflow_id="w",
        step=hid,
        tool=tool,
        args=args,
        deadline_ms=kw.pop("deadline_ms", 60_000),
        **kw,
    )


async def _raw_offer(host: P2PHost, peer: str, offer: handoff.Offer) -> handoff.HandoffMessage:
    """Offer without acknowledging anything: the first answer (reject or accept)."""
    ms = MessageStream(await host.open_stream(peer, handoff.PROTOCOL_ID), handoff.CODEC)
    await ms.send(offer)
    with trio.fail_after(10):
        reply = await ms.receive()
    assert not isinstance(reply, ErrorMessage)
    return reply


async def test_quotas_refuse_with_typed_reasons_and_retry_hints(tmp_path: Path) -> None:
    """Per offering peer: argument size, deadline, steps in flight, offers per minute. The
    node goes on serving its own workflows and other peers."""
    a = make_node(
        tmp_path,
        "a",
        "util",
        # cpus=2: 4 slots, 3 for peers; the stranger's two naps leave one for c
        handoff={
            "max_inflight_per_peer": 2,
            "max_args_bytes": 2048,
            "max_deadline_s": 3600,
            "max_offers_per_minute": 12,
        },
    )
    stranger = member_host(tmp_path)
    async with trio.open_nursery() as nursery, stranger.run(LOOPBACK):
        c, _ = await launch_delegator(nursery, tmp_path, a)
        await stranger.connect(a.peer_id, a.host.addrs())
        big = await _raw_offer(
            stranger, a.peer_id, _offer("big", "util.echo", {"value": "x" * 3000})
        )
        assert isinstance(big, handoff.Reject) and big.code == "limit_exceeded"
        assert "2048" in big.message and big.retry_after_ms is None
        slow = await _raw_offer(
            stranger, a.peer_id, _offer("slow", "util.sleep", {"seconds": 1}, deadline_ms=3_601_000)
        )
        assert isinstance(slow, handoff.Reject) and slow.code == "limit_exceeded"

        for i in range(2):
            accepted = await _raw_offer(
                stranger, a.peer_id, _offer(f"nap{i}", "util.sleep", {"seconds": 30})
            )
            assert isinstance(accepted, handoff.Accept)
        third = await _raw_offer(stranger, a.peer_id, _offer("nap2", "util.sleep", {"seconds": 1}))
        assert isinstance(third, handoff.Reject) and third.code == "quota_exceeded"
        assert third.retry_after_ms is not None and third.retry_after_ms > 0

        # 5 offers so far; a burst of 12 a minute: the 13th request within the minute is refused
        codes = []
        for i in range(8):
            reply = await _raw_offer(
                stranger, a.peer_id, _offer(f"f{i}", "util.echo", {"value": i})
            )
            codes.append(reply.code if isinstance(reply, handoff.Reject) else reply.type)
        assert codes[-1] == "quota_exceeded" and "a minute" in reply.message  # type: ignore[union-attr]
        assert reply.retry_after_ms is not None  # type: ignore[union-attr]

        # another peer, and the node's own workflows, are served as before
        wid, _ = await c.workflows.submit(parse_workflow(NAP), {}, "nap-quota")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        for i in range(2):  # the stranger is over its rate: the operator stops them
            assert a.handoff.cancel_by_operator(f"nap{i}", stranger.peer_id)
        nursery.cancel_scope.cancel()


async def test_peers_filling_every_slot_do_not_starve_the_nodes_own_workflow(
    tmp_path: Path,
) -> None:
    """A stranger keeps six 30 s steps on a (cpus=1: 2 slots, 1 for peers): one runs, five
    wait for the peer slot. a's own one-step workflow still runs at once, in the reserved
    slot, and ends while the stranger's steps are still running."""
    a = make_node(tmp_path, "a", "util", cpus=1)
    stranger = member_host(tmp_path)
    async with trio.open_nursery() as nursery, stranger.run(LOOPBACK):
        await launch(nursery, a)
        await stranger.connect(a.peer_id, a.host.addrs())
        for i in range(6):
            reply = await _raw_offer(
                stranger, a.peer_id, _offer(f"nap{i}", "util.sleep", {"seconds": 30})
            )
            assert isinstance(reply, handoff.Accept)
        await wait_until(lambda: a.handoff.slots.used == 1, what="the stranger in its slot")
        assert a.handoff.slots.slots == 1 and a.handoff.slots.waiting == 5
        await wait_until(lambda: not _ray_idle(), what="the stranger's Ray tasks running")

        wf = (
            "id: mine\nsteps:\n  - name: hi\n    tool: util.echo\n"
            "    inputs: [{name: value, value: 1}]\n"
        )
        wid, _ = await a.workflows.submit(parse_workflow(wf), {}, "mine-1")
        with trio.fail_after(20):
            view = await a.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.steps[0].node == a.peer_id
        # the stranger's steps are still where they were: ours did not wait for them
        assert a.handoff.slots.running == {stranger.peer_id: 1}
        for i in range(6):
            await cancel_handoff(
                stranger,
                a.peer_id,
                f"nap{i}",
                "done",
                network=a.config.network,
                config=a.config.handoff,
            )
        nursery.cancel_scope.cancel()


async def test_results_a_peer_never_acknowledges_stay_under_its_bound(tmp_path: Path) -> None:
    """Twenty 60 KB echoes whose results the stranger never acknowledges: a keeps at most
    ``max_stored_bytes_per_peer`` of them; the journal file stays small."""
    a = make_node(tmp_path, "a", "util", handoff={"max_stored_bytes_per_peer": 256 * 1024})
    stranger = member_host(tmp_path)
    async with trio.open_nursery() as nursery, stranger.run(LOOPBACK):
        await launch(nursery, a)
        await stranger.connect(a.peer_id, a.host.addrs())
        for i in range(20):
            ms = MessageStream(
                await stranger.open_stream(a.peer_id, handoff.PROTOCOL_ID), handoff.CODEC
            )
            await ms.send(_offer(f"e{i}", "util.echo", {"value": "x" * 60_000}))
            with trio.fail_after(20):
                while not isinstance(await ms.receive(), handoff.StepResult):
                    pass
            await ms.reset()  # no ack
        await wait_until(lambda: a.handoff.settled, what="a finishing the echoes")
        stored = a.journal.stored_bytes(stranger.peer_id)
        assert 0 < stored <= 256 * 1024
        assert a.journal.file_bytes() < 3 * 1024 * 1024  # 20 results would be 1.2 MB stored
        # the newest results are kept (a re-attach gets them), the oldest were evicted
        newest = a.journal.get_handoff("e19", direction="in", peer=stranger.peer_id)
        oldest = a.journal.get_handoff("e0", direction="in", peer=stranger.peer_id)
        assert newest is not None and newest.outputs is not None
        assert oldest is not None and oldest.outputs is None
        nursery.cancel_scope.cancel()


async def test_epochs_reattach_rerun_and_refuse_superseded_attempts(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a", "util")
    b = member_host(tmp_path)
    async with trio.open_nursery() as nursery, b.run(LOOPBACK):
        await launch(nursery, a)
        await b.connect(a.peer_id, a.host.addrs())
        net, cfg = a.config.network, a.config.handoff

        async def run(epoch: int, **kw: Any) -> Any:
            offer = _offer("h", kw.pop("tool", "util.step_key"), kw.pop("args", {}), epoch=epoch)
            return await delegate(b, a.peer_id, offer, network=net, config=cfg)

        first = await run(0)
        assert first.epoch == 0 and a.handoff.started_jobs == 1
        assert first.receipt["epoch"] == 0 and first.receipt["delegator"] == b.peer_id
        # acknowledged: the same attempt offered again runs again (at-least-once)
        await wait_until(
            lambda: (
                (r := a.journal.get_handoff("h", direction="in", peer=b.peer_id)) is not None
                and r.acked_at is not None
            ),
            what="the ack",
        )
        second = await run(2)
        assert second.epoch == 2 and a.handoff.started_jobs == 2
        with pytest.raises(HandoffRejectedError) as info:
            await run(1)
        assert info.value.code == "superseded" and info.value.epoch == 2
        assert a.handoff.started_jobs == 2

        # a higher epoch stops the attempt still running and runs anew
        old_ended: list[BaseException] = []

        async def old() -> None:
            try:
                await run(3, tool="util.sleep", args={"seconds": 30})
            except HandoffCanceledError as exc:
                old_ended.append(exc)

        nursery.start_soon(old)
        await wait_until(lambda: a.handoff.running == 1, what="attempt 3 running")
        newer = await run(4, tool="util.echo", args={"value": "four"})
        assert newer.outputs == {"result": "four"} and newer.epoch == 4
        await wait_until(lambda: bool(old_ended), what="attempt 3 told it was superseded")
        assert "superseded by attempt 4" in str(old_ended[0])
        nursery.cancel_scope.cancel()


async def _announce(
    host: P2PHost, node: Node, tools: list[str], *, deterministic: bool = False
) -> None:
    """Tell ``node`` (first-hand, as discovery does) that ``host`` offers ``tools``."""
    card = discovery.NodeCard(
        peer_id=host.peer_id,
        addrs=host.addrs(),
        version="0.1.0",
        tools=[
            discovery.ToolCard(name=t, version="1.0.0", deterministic=deterministic) for t in tools
        ],
        load=discovery.LoadInfo(running=0, capacity=100_000),
    )
    ms = MessageStream(await host.open_stream(node.peer_id, discovery.PROTOCOL_ID), discovery.CODEC)
    await ms.send(discovery.Hello(card=card))
    with trio.fail_after(10):
        await ms.receive()
    await ms.close()


async def test_a_result_without_a_valid_receipt_is_a_failed_attempt(tmp_path: Path) -> None:
    """A malicious member claims text.upper, reads the input and answers with made-up outputs
    and a receipt it signed for the honest outputs: the delegator checks the receipt against
    what it received, refuses the result and the step fails naming the bad receipt."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    from node import identity
    from protocols.handoff.receipt import receipt_payload, signed_bytes

    key = create_new_key_pair()
    liar = member_host(tmp_path, key)
    seen: list[dict[str, Any]] = []

    async def lie(stream: Any) -> None:
        ms = MessageStream(stream, handoff.CODEC)
        offer = await ms.receive()
        assert isinstance(offer, handoff.Offer)
        seen.append(dict(offer.args))
        honest = {"result": str(offer.args["text"]).upper()}
        payload = receipt_payload(
            handoff_id=offer.handoff_id,
            epoch=offer.epoch,
            delegator=stream.remote_peer,
            delegatee=liar.peer_id,
            tool=offer.tool,
            tool_version="1.0.0",
            args_sha256=json_sha256(offer.args),
            outputs_sha256=json_sha256(honest),
        )
        receipt = handoff.Receipt(
            tool_version="1.0.0",
            args_sha256=payload["args_sha256"],
            outputs_sha256=payload["outputs_sha256"],
            signature=identity.sign(key, signed_bytes(payload)),
        )
        await ms.send(handoff.Accept(handoff_id=offer.handoff_id, epoch=offer.epoch))
        await ms.send(
            handoff.StepResult(
                handoff_id=offer.handoff_id,
                epoch=offer.epoch,
                outputs={"result": "FAKE"},
                duration_ms=1,
                receipt=receipt,
            )
        )
        await trio.sleep(1)

    liar.set_handler(handoff.PROTOCOL_ID, lie)
    c = make_node(tmp_path, "c", "none")
    async with trio.open_nursery() as nursery, liar.run(LOOPBACK):
        await launch(nursery, c)
        await liar.connect(c.peer_id, c.host.addrs())
        await _announce(liar, c, ["text.upper"])
        assert c.registry.has_fresh_card(liar.peer_id)
        wid, _ = await c.workflows.submit(parse_workflow(SHOUT), {"text": "secret"}, "liar-1")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert seen == [{"text": "secret"}]  # a member that runs a step sees its inputs
        assert view.status is WorkflowStatus.FAILED
        assert "invalid receipt" in (view.error or "") and "other outputs" in (view.error or "")
        exclusion = c.registry.exclusion(liar.peer_id)  # and it gets no more steps for a while
        assert exclusion is not None and "invalid receipt" in exclusion.reason
        nursery.cancel_scope.cancel()


def _signed_liar(tmp: Path, outputs: Any) -> P2PHost:
    """A member that answers every offer with ``outputs(offer)`` and a receipt it really
    signed for them: its results pass every check but the truth."""
    from libp2p.crypto.ed25519 import create_new_key_pair

    from node import identity
    from protocols.handoff.receipt import receipt_payload, signed_bytes

    key = create_new_key_pair()
    liar = member_host(tmp, key)

    async def lie(stream: Any) -> None:
        ms = MessageStream(stream, handoff.CODEC)
        offer = await ms.receive()
        assert isinstance(offer, handoff.Offer)
        made_up = outputs(offer)
        payload = receipt_payload(
            handoff_id=offer.handoff_id,
            epoch=offer.epoch,
            delegator=stream.remote_peer,
            delegatee=liar.peer_id,
            tool=offer.tool,
            tool_version="1.0.0",
            args_sha256=json_sha256(offer.args),
            outputs_sha256=json_sha256(made_up),
        )
        await ms.send(handoff.Accept(handoff_id=offer.handoff_id, epoch=offer.epoch))
        await ms.send(
            handoff.StepResult(
                handoff_id=offer.handoff_id,
                epoch=offer.epoch,
                outputs=made_up,
                duration_ms=1,
                receipt=handoff.Receipt(
                    tool_version="1.0.0",
                    args_sha256=payload["args_sha256"],
                    outputs_sha256=payload["outputs_sha256"],
                    signature=identity.sign(key, signed_bytes(payload)),
                ),
            )
        )
        with trio.move_on_after(2):
            await ms.receive_or_eof()  # the ack

    liar.set_handler(handoff.PROTOCOL_ID, lie)
    return liar


ADD = """
id: add
steps:
  - name: add
    tool: math.add
    inputs: [{name: a, value: 2}, {name: b, value: 40}]
    verify: {replicas: 3}
outputs:
  - {name: sum, value: "{{steps.add.outputs.result}}"}
"""


async def _math_swarm(nursery: trio.Nursery, tmp: Path) -> tuple[Node, Node, Node, Node]:
    """a and b (math), then c (no tools) bootstrapped to both, and d (math) that c knows
    only through peer exchange."""
    a = make_node(tmp, "a", "math")
    await launch(nursery, a)
    b = make_node(tmp, "b", "math")
    await launch(nursery, b)
    c = make_node(tmp, "c", "none", bootstrap=[*a.host.addrs(), *b.host.addrs()])
    await launch(nursery, c)
    d = make_node(tmp, "d", "math", bootstrap=a.host.addrs())
    await launch(nursery, d)
    for x in (a, b, d):
        await wait_until(lambda x=x: c.registry.has_fresh_card(x.peer_id), what="c's peers")
    return a, b, c, d


async def test_a_replicated_step_runs_on_distinct_nodes_and_agrees(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        a, b, c, d = await _math_swarm(nursery, tmp_path)
        wid, _ = await c.workflows.submit(parse_workflow(ADD), {}, "add-3")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.outputs == {"sum": 42}
        reason = view.steps[0].reason or ""
        assert reason.startswith("verified: 3 nodes returned the same output"), reason
        ran = {n.peer_id for n in (a, b, d) if n.handoff.started_jobs == 1}
        assert ran == {a.peer_id, b.peer_id, d.peer_id}  # each ran it once
        nursery.cancel_scope.cancel()


async def test_a_replica_that_lies_fails_the_step_and_is_outvoted(tmp_path: Path) -> None:
    """Two honest nodes and a member that signs a wrong sum: the replicas disagree, the step
    fails naming every node and what it returned, and the outvoted liar is excluded."""
    liar = _signed_liar(tmp_path, lambda offer: {"result": 41})
    a = make_node(tmp_path, "a", "math")
    b = make_node(tmp_path, "b", "math")
    c = make_node(tmp_path, "c", "none")
    async with trio.open_nursery() as nursery, liar.run(LOOPBACK):
        for node in (a, b, c):
            await launch(nursery, node)
        for node in (a, b):
            await c.host.connect(node.peer_id, node.host.addrs())
            await c.discovery.exchange(node.peer_id)
        await liar.connect(c.peer_id, c.host.addrs())
        await _announce(liar, c, ["math.add"], deterministic=True)
        wid, _ = await c.workflows.submit(parse_workflow(ADD), {}, "add-liar")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED
        error = view.error or ""
        assert "the 3 replicas of step 'add' (math.add) disagree" in error, error
        assert '{"result":42}' in error and '{"result":41}' in error
        assert "outvoted and excluded" in error
        exclusion = c.registry.exclusion(liar.peer_id)
        assert exclusion is not None and "disagreed with 2 of 3" in exclusion.reason
        assert c.registry.exclusion(a.peer_id) is None and c.registry.exclusion(b.peer_id) is None
        nursery.cancel_scope.cancel()


async def test_replication_needs_a_deterministic_tool_and_enough_nodes(tmp_path: Path) -> None:
    liar = _signed_liar(tmp_path, lambda offer: {"result": 42})
    a = make_node(tmp_path, "a", "math")
    c = make_node(tmp_path, "c", "none")
    async with trio.open_nursery() as nursery, liar.run(LOOPBACK):
        for node in (a, c):
            await launch(nursery, node)
        await c.host.connect(a.peer_id, a.host.addrs())
        await c.discovery.exchange(a.peer_id)
        wid, _ = await c.workflows.submit(parse_workflow(ADD), {}, "add-short")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED
        assert "needs 3 nodes running 'math.add'" in (view.error or ""), view.error

        # a peer that does not declare the tool deterministic cannot be a replica
        await liar.connect(c.peer_id, c.host.addrs())
        await _announce(liar, c, ["math.add"], deterministic=False)
        wid, _ = await c.workflows.submit(parse_workflow(ADD), {}, "add-nondet")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED
        assert "not declared deterministic" in (view.error or ""), view.error
        nursery.cancel_scope.cancel()


async def test_placement_peers_restricts_where_a_step_runs(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        a, b, c, d = await _math_swarm(nursery, tmp_path)
        only_d = ADD.replace("verify: {replicas: 3}", f"placement: {{peers: [{d.peer_id}]}}")
        for i in range(3):
            wid, _ = await c.workflows.submit(parse_workflow(only_d), {}, f"only-d-{i}")
            with trio.fail_after(30):
                view = await c.workflows.wait(wid)
            assert view.status is WorkflowStatus.SUCCESSFUL, view.error
            assert view.steps[0].node == d.peer_id
        assert a.handoff.started_jobs == b.handoff.started_jobs == 0

        # a node that does not offer the tool: after its wait for a provider, the step
        # fails, saying what placement allowed
        only_c = ADD.replace(
            "verify: {replicas: 3}",
            f"placement: {{peers: [{c.peer_id}]}}\n    wait_for_provider: 1s",
        )
        wid, _ = await c.workflows.submit(parse_workflow(only_c), {}, "only-c")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED
        assert "placement.peers allows only" in (view.error or ""), view.error
        nursery.cancel_scope.cancel()


async def test_the_operator_lists_and_stops_what_peers_run_on_the_node(tmp_path: Path) -> None:
    """``hivemesh handoffs`` / ``handoffs cancel`` through the control protocol, with the
    node's own client key: a stranger's two steps are listed (peer, tool, state), one is
    stopped and its delegator is told it was canceled by the node's operator."""
    from node.client import request
    from node.errors import RequestFailedError
    from node.home import Home
    from protocols import control
    from tests.integration.harness import swarm_key

    a = make_node(tmp_path, "a", "util", cpus=1)  # 2 slots, 1 for peers
    stranger = member_host(tmp_path)
    key, psk = Home(tmp_path / "a").load_client_key(), swarm_key(tmp_path)
    async with trio.open_nursery() as nursery, stranger.run(LOOPBACK):
        await launch(nursery, a)
        await stranger.connect(a.peer_id, a.host.addrs())
        ended: list[BaseException] = []

        async def offer(hid: str) -> None:
            try:
                await delegate(
                    stranger,
                    a.peer_id,
                    _offer(hid, "util.sleep", {"seconds": 30}),
                    network=a.config.network,
                    config=a.config.handoff,
                )
            except HandoffCanceledError as exc:
                ended.append(exc)

        for hid in ("nap-1", "nap-2", "nap-3"):
            nursery.start_soon(offer, hid)
        await wait_until(lambda: a.handoff.running == 3, what="three steps accepted")
        addr = a.host.addrs()[0]
        listed = await request(key, addr, control.HandoffsRequest(), swarm_key=psk)
        assert isinstance(listed, control.Handoffs)
        assert {(h.peer, h.tool) for h in listed.handoffs} == {(stranger.peer_id, "util.sleep")}
        states = sorted(h.state for h in listed.handoffs)
        assert states == ["running", "waiting", "waiting"]  # one peer slot of two
        assert all(h.deadline_s == 60 and h.epoch == 0 for h in listed.handoffs)

        stopped = await request(
            key, addr, control.HandoffCancelRequest(handoff_id="nap-2"), swarm_key=psk
        )
        assert [h.handoff_id for h in stopped.handoffs] == ["nap-2"]
        await wait_until(lambda: bool(ended), what="the stranger told of the cancel")
        assert "canceled by this node's operator" in str(ended[0])
        with pytest.raises(RequestFailedError) as info:
            await request(key, addr, control.HandoffCancelRequest(handoff_id="nope"), swarm_key=psk)
        assert info.value.code == "not_found" and "hivemesh handoffs" in info.value.message
        for hid in ("nap-1", "nap-3"):
            a.handoff.cancel_by_operator(hid)
        await wait_until(lambda: a.handoff.running == 0, timeout_s=15, what="all stopped")
        nursery.cancel_scope.cancel()


async def test_a_fan_out_beyond_a_peers_quota_waits_instead_of_failing(tmp_path: Path) -> None:
    """24 independent steps for the only peer that offers the tool, which accepts 4 at a time
    from one peer: its quota_exceeded rejections are backpressure (the steps wait and ask
    again), not failures; the workflow succeeds."""
    a = make_node(tmp_path, "a", "util", handoff={"max_inflight_per_peer": 4})
    steps = "".join(
        f"  - name: s{i}\n    tool: util.echo\n    inputs: [{{name: value, value: {i}}}]\n"
        for i in range(24)
    )
    wf = f"id: fan\nsteps:\n{steps}"  # no outputs: the workflow waits for every step
    async with trio.open_nursery() as nursery:
        c, _ = await launch_delegator(nursery, tmp_path, a)
        wid, _ = await c.workflows.submit(parse_workflow(wf), {}, "fan-24")
        with trio.fail_after(90):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        elsewhere = [
            (s.name, s.status, s.node)
            for s in view.steps
            if s.status != "SUCCESSFUL" or s.node != a.peer_id
        ]
        assert not elsewhere, elsewhere
        assert len(view.steps) == 24
        assert a.handoff.started_jobs == 24  # each ran once: refused offers never ran
        nursery.cancel_scope.cancel()
