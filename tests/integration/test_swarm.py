"""Real libp2p hosts on 127.0.0.1 (port 0) in one trio run, with a real Ray."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
import trio

from node.client import request
from node.errors import NodeUnreachableError, NotAuthorisedError, RequestFailedError
from node.handoff import (
    Abandon,
    HandoffCanceledError,
    HandoffLostError,
    HandoffRejectedError,
    abandon_on_cancel,
    cancel_handoff,
    delegate,
)
from node.home import Home
from protocols import control, discovery, handoff
from protocols.errors import StreamClosedError
from protocols.framing import encode_frame, encode_uvarint
from protocols.stream import MessageStream
from tests.integration.harness import (
    launch,
    launch_delegator,
    launch_demo_swarm,
    make_node,
    member_host,
    swarm_key,
    wait_until,
)
from workflows.dsl import parse_workflow
from workflows.status import WorkflowStatus

pytestmark = pytest.mark.usefixtures("ray_cluster")

TEXT_MATH = """
id: tm
inputs:
  - name: text
    default: "one two three"
steps:
  - name: shout
    tool: text.upper
    inputs: [{name: text, value: "{{inputs.text}}"}]
  - name: count
    tool: text.word_count
    inputs: [{name: text, value: "{{inputs.text}}"}]
  - name: double
    tool: math.multiply
    inputs:
      - {name: a, value: "{{steps.count.outputs.result}}"}
      - {name: b, value: 2}
outputs:
  - {name: shouted, value: "{{steps.shout.outputs.result}}"}
  - {name: doubled, value: "{{steps.double.outputs.result}}"}
  - {name: summary, value: "{{steps.count.outputs.result}} words"}
"""


async def test_cards_and_peer_exchange_across_three_hosts(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        a, b, c = await launch_demo_swarm(nursery, tmp_path)

        # c bootstrapped only to a, and learns b (its card and tools) through a
        await wait_until(lambda: c.registry.has_fresh_card(b.peer_id), what="c learning b")
        await wait_until(lambda: c.host.is_connected(b.peer_id), what="c dialling b")
        await wait_until(lambda: b.registry.has_fresh_card(c.peer_id), what="b learning c")
        b_state = c.registry.get(b.peer_id)
        assert b_state is not None and b_state.card is not None
        assert {t.name for t in b_state.card.tools} == {
            "math.add",
            "math.multiply",
            "math.sum_list",
        }
        tool = next(t for t in b_state.card.tools if t.name == "math.add")
        assert tool.input_schema["properties"].keys() == {"a", "b"}
        assert [p.peer_id for p, _ in c.registry.providers("text.upper", None)] == [a.peer_id]
        assert c.registry.providers("text.upper", "2") == []  # version requirement honoured
        nursery.cancel_scope.cancel()


async def test_workflow_routed_to_nodes_that_have_the_tools(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        a, b, c = await launch_demo_swarm(nursery, tmp_path)
        await wait_until(lambda: c.registry.has_fresh_card(b.peer_id), what="c learning b")

        wid, created = await c.workflows.submit(parse_workflow(TEXT_MATH), {"text": "a b c d"})
        assert created
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.outputs == {"shouted": "A B C D", "doubled": 8, "summary": "4 words"}
        where = {s.name: s.node for s in view.steps}
        assert where == {"shout": a.peer_id, "count": a.peer_id, "double": b.peer_id}
        assert all(s.reason and "remote" in s.reason for s in view.steps)

        # idempotent submit: same id, nothing runs again
        again, created = await c.workflows.submit(parse_workflow(TEXT_MATH), {}, wid)
        assert (again, created) == (wid, False)
        assert [s.attempts for s in (await c.workflows.view(wid)).steps] == [1, 1, 1]
        nursery.cancel_scope.cancel()


async def test_handoff_round_trip_and_rejection(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a", "math")
    b = make_node(tmp_path, "b", "none")
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        await launch(nursery, b)
        await b.host.connect(a.peer_id, a.host.addrs())
        offer = handoff.Offer(
            handoff_id="h-1",
            workflow_id="w",
            step="s",
            tool="math.add",
            args={"a": 2, "b": 40},
            deadline_ms=20_000,
        )
        outcome = await delegate(
            b.host, a.peer_id, offer, network=b.config.network, config=b.config.handoff
        )
        assert outcome.outputs == {"result": 42}
        await wait_until(lambda: a.handoff.settled, what="the outcome journaled")
        stored = a.journal.get_handoff("h-1", direction="in", peer=b.peer_id)
        assert stored is not None and stored.status == "SUCCESSFUL" and stored.peer == b.peer_id

        # the same handoff id again returns the stored result (idempotent)
        outcome2 = await delegate(
            b.host, a.peer_id, offer, network=b.config.network, config=b.config.handoff
        )
        assert outcome2.outputs == {"result": 42}

        missing = handoff.Offer(
            handoff_id="h-2",
            workflow_id="w",
            step="s",
            tool="text.upper",
            args={"text": "x"},
            deadline_ms=1000,
        )
        with pytest.raises(HandoffRejectedError) as info:
            await delegate(
                b.host, a.peer_id, missing, network=b.config.network, config=b.config.handoff
            )
        assert info.value.code == "no_such_tool" and "text.upper" in str(info.value)
        nursery.cancel_scope.cancel()


async def test_handoff_to_a_peer_killed_mid_step_is_a_typed_error(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a", "util")
    b = make_node(tmp_path, "b", "none")
    async with trio.open_nursery() as nursery:
        a_scope = await launch(nursery, a)
        await launch(nursery, b)
        await b.host.connect(a.peer_id, a.host.addrs())
        offer = handoff.Offer(
            handoff_id="slow",
            workflow_id="w",
            step="s",
            tool="util.sleep",
            args={"seconds": 60},
            deadline_ms=120_000,
        )
        errors: list[BaseException] = []

        async def run() -> None:
            try:
                await delegate(
                    b.host, a.peer_id, offer, network=b.config.network, config=b.config.handoff
                )
            except HandoffLostError as exc:
                errors.append(exc)

        async with trio.open_nursery() as inner:
            inner.start_soon(run)
            await wait_until(lambda: a.handoff.running == 1, what="a running the step")
            killed_at = time.monotonic()
            a_scope.cancel()  # a goes away with the step half done
            with trio.fail_after(10):
                await wait_until(lambda: bool(errors), timeout_s=10, what="a typed error")
        assert isinstance(errors[0], HandoffLostError)
        assert "outcome unknown" in str(errors[0])
        assert time.monotonic() - killed_at < 5
        nursery.cancel_scope.cancel()


async def test_silent_peer_times_out_instead_of_hanging(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a", "none")
    key = Home(tmp_path / "a").load_client_key()
    silent = member_host(tmp_path, key)

    async def accept_then_hang(stream: object) -> None:
        ms = MessageStream(stream, handoff.CODEC)  # type: ignore[arg-type]
        offer = await ms.receive()
        await ms.send(handoff.Accept(handoff_id=offer.handoff_id, epoch=0))  # type: ignore[union-attr]
        await trio.sleep_forever()

    silent.set_handler(handoff.PROTOCOL_ID, accept_then_hang)
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        async with silent.run(["/ip4/127.0.0.1/tcp/0"]):
            await a.host.connect(silent.peer_id, silent.addrs())
            offer = handoff.Offer(
                handoff_id="x",
                workflow_id="w",
                step="s",
                tool="util.echo",
                args={"value": 1},
                deadline_ms=60_000,
            )
            started = time.monotonic()
            with pytest.raises(HandoffLostError, match="went silent"):
                await delegate(
                    a.host, silent.peer_id, offer, network=a.config.network, config=a.config.handoff
                )
            assert time.monotonic() - started < a.config.handoff.heartbeat_timeout_s + 3
        nursery.cancel_scope.cancel()


async def test_raising_handler_and_garbage_frames_do_not_take_the_host_down(
    tmp_path: Path,
) -> None:
    a = make_node(tmp_path, "a", "math")

    async def boom(stream: object) -> None:
        raise RuntimeError("handler bug")

    a.host._running = False  # allow one more handler for the test
    a.host.set_handler("/test/boom/1", boom)
    b = make_node(tmp_path, "b", "none")
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        await launch(nursery, b)
        await b.host.connect(a.peer_id, a.host.addrs())

        try:
            s = await b.host.open_stream(a.peer_id, "/test/boom/1")
            with trio.fail_after(5):
                assert await s.read(10) == b""  # reset or closed, never a hang
        except (NodeUnreachableError, StreamClosedError):
            pass  # the reset, after the protocol's answer or while it is being negotiated

        # garbage, an oversized header and an unknown type on each protocol
        for proto in (discovery.PROTOCOL_ID, handoff.PROTOCOL_ID):
            for junk in (b"\x05hello", encode_uvarint(1 << 30), encode_frame({"type": "nonsense"})):
                s = await b.host.open_stream(a.peer_id, proto)
                await s.write(junk)
                with trio.fail_after(5):
                    data = await s.read(4096)
                # either a typed error frame or a reset; then the stream is gone
                assert data == b"" or b'"type":"error"' in data
        # the host still serves real requests
        await b.discovery.exchange(a.peer_id)
        assert b.registry.has_fresh_card(a.peer_id)
        nursery.cancel_scope.cancel()


async def test_control_requires_an_authorised_client_key(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a", "text")
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        addr = a.host.addrs()[0]
        own = Home(tmp_path / "a").load_client_key()
        info = await request(own, addr, control.InfoRequest(), swarm_key=swarm_key(tmp_path))
        assert info.peer_id == a.peer_id and "text.upper" in info.tools

        stranger = Home(tmp_path / "stranger")
        stranger.init()
        with pytest.raises(NotAuthorisedError, match="not authorised"):
            await request(
                stranger.load_client_key(),
                addr,
                control.InfoRequest(),
                swarm_key=swarm_key(tmp_path),
            )
        nursery.cancel_scope.cancel()


async def test_rogue_peer_cards_and_peer_ids_do_not_take_the_node_down(tmp_path: Path) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    from node.discovery import InvalidCardError

    a = make_node(tmp_path, "a", "math")
    rogue = member_host(tmp_path, create_new_key_pair())

    async def lying_hello(stream: object) -> None:
        ms = MessageStream(stream, discovery.CODEC)  # type: ignore[arg-type]
        await ms.receive()
        card = discovery.NodeCard(peer_id=a.peer_id, addrs=[], version="9.9.9")  # not its own
        await ms.send(
            discovery.Hello(
                card=card,
                peers=[discovery.PeerRef(peer_id="not-a-peer!", addrs=["/ip4/127.0.0.1/tcp/1"])],
            )
        )
        await ms.close()

    rogue.set_handler(discovery.PROTOCOL_ID, lying_hello)
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        async with rogue.run(["/ip4/127.0.0.1/tcp/0"]):
            await a.host.connect(rogue.peer_id, rogue.addrs())
            a.registry.learn(rogue.peer_id, rogue.addrs())
            with pytest.raises(InvalidCardError):
                await a.discovery.exchange(rogue.peer_id)
            # a peer exchange entry with a garbage peer id is ignored, not dialled
            hello = discovery.Hello(
                card=discovery.NodeCard(peer_id=rogue.peer_id, addrs=rogue.addrs(), version="0"),
                peers=[discovery.PeerRef(peer_id="not-a-peer!", addrs=[])],
            )
            a.discovery._absorb(hello, rogue.peer_id)
            assert a.registry.get("not-a-peer!") is None
            await trio.sleep(0.5)  # let the refresh loop run over the rogue entries
        # the node still serves: its own client can talk to it
        own = Home(tmp_path / "a").load_client_key()
        info = await request(
            own, a.host.addrs()[0], control.InfoRequest(), swarm_key=swarm_key(tmp_path)
        )
        assert info.peer_id == a.peer_id
        nursery.cancel_scope.cancel()


async def test_only_noise_and_yamux_are_accepted(tmp_path: Path) -> None:
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex

    # An open node: py-libp2p's own host cannot do the private-network handshake, and the
    # muxer is what this test is about.
    a = make_node(tmp_path, "a", "none", swarm={"open": True})
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        # (libp2p's create_mplex_muxer_option() also offers yamux; this host does not)
        mplex_only = new_host(
            key_pair=create_new_key_pair(), muxer_opt={TProtocol(MPLEX_PROTOCOL_ID): Mplex}
        )
        async with mplex_only.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            with trio.move_on_after(10):
                with contextlib.suppress(Exception):
                    await mplex_only.connect(
                        info_from_p2p_addr(multiaddr.Multiaddr(a.host.addrs()[0]))
                    )
            assert a.host.peer_id not in {str(p) for p in mplex_only.get_connected_peers()}
        nursery.cancel_scope.cancel()


async def test_cancel_through_the_control_protocol(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a", "util")
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        key = Home(tmp_path / "a").load_client_key()
        addr = a.host.addrs()[0]
        psk = swarm_key(tmp_path)
        wf = (
            "id: long\nsteps:\n  - name: nap\n    tool: util.sleep\n"
            "    inputs: [{name: seconds, value: 60}]\n"
        )
        sub = await request(
            key, addr, control.SubmitRequest(workflow=wf, workflow_id="long-1"), swarm_key=psk
        )
        assert sub.created
        with trio.fail_after(20):
            while True:
                st = await request(
                    key, addr, control.StatusRequest(workflow_id="long-1"), swarm_key=psk
                )
                if st.steps[0].status == "RUNNING":
                    break
                await trio.sleep(0.05)
        reply = await request(key, addr, control.CancelRequest(workflow_id="long-1"), swarm_key=psk)
        assert reply.status == "CANCELED"
        assert reply.steps[0].status == "CANCELED"
        res = await request(
            key, addr, control.ResultRequest(workflow_id="long-1", wait=True), swarm_key=psk
        )
        assert res.status == "CANCELED" and res.outputs is None
        with pytest.raises(RequestFailedError, match="no workflow"):
            await request(key, addr, control.CancelRequest(workflow_id="nope"), swarm_key=psk)
        nursery.cancel_scope.cancel()


async def test_a_restarted_delegator_reattaches_to_the_running_step(tmp_path: Path) -> None:
    """The node that delegated a step stops mid-step and comes back (same home): the
    resumed workflow asks the same peer again with the same handoff id and gets the one run's
    result; the step body does not run twice."""
    a = make_node(tmp_path, "a", "util")
    wf = (
        "id: nap\nsteps:\n  - name: nap\n    tool: util.sleep\n"
        "    inputs: [{name: seconds, value: 3}]\n"
        "outputs: [{name: slept, value: '{{steps.nap.outputs.result}}'}]\n"
    )
    async with trio.open_nursery() as nursery:
        c, c_scope = await launch_delegator(nursery, tmp_path, a)
        wid, _ = await c.workflows.submit(parse_workflow(wf), {}, "nap-1")
        await wait_until(lambda: a.handoff.running == 1, what="a running the step")
        c_scope.cancel()  # the delegator goes away; a keeps running the step
        # as after a real restart, the old process (same peer id) is gone from a's view first
        await wait_until(lambda: not a.host.is_connected(c.peer_id), what="c's old connection")

        again = make_node(tmp_path, "c", "none", bootstrap=a.host.addrs())
        await launch(nursery, again)
        with trio.fail_after(30):
            view = await again.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.outputs == {"slept": 3.0}
        assert view.steps[0].node == a.peer_id
        assert view.steps[0].reason is not None and "re-attach" in view.steps[0].reason
        assert a.handoff.started_jobs == 1  # joined (or stored result), never run twice
        nursery.cancel_scope.cancel()


def _ray_cpus() -> tuple[float, float]:
    """(free, total) CPUs of the session's Ray."""
    import ray

    return float(ray.available_resources().get("CPU", 0.0)), float(ray.cluster_resources()["CPU"])


def _ray_idle() -> bool:
    free, total = _ray_cpus()
    return free >= total


NAP_60 = (
    "id: nap\nsteps:\n  - name: nap\n    tool: util.sleep\n"
    "    inputs: [{name: seconds, value: 60}]\n"
)


async def test_tools_see_the_steps_idempotency_key_locally_and_on_a_delegatee(
    tmp_path: Path,
) -> None:
    """A step's idempotency key is "<workflow_id>/<step>" wherever the step runs: a tool
    reads it with workflows.tools.current_call() (util.step_key returns it)."""
    wf = (
        "id: keys\nsteps:\n  - name: here\n    tool: util.step_key\n"
        "  - name: there\n    tool: util.step_key\n"
        "outputs:\n  - {name: here, value: '{{steps.here.outputs.result}}'}\n"
        "  - {name: there, value: '{{steps.there.outputs.result}}'}\n"
    )
    a = make_node(tmp_path, "a", "util")
    async with trio.open_nursery() as nursery:
        c, _ = await launch_delegator(nursery, tmp_path, a)
        wid, _ = await a.workflows.submit(parse_workflow(wf), {}, "keys-local")
        with trio.fail_after(30):
            view = await a.workflows.wait(wid)
        assert view.outputs == {"here": "keys-local/here", "there": "keys-local/there"}
        wid, _ = await c.workflows.submit(parse_workflow(wf), {}, "keys-remote")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert {s.node for s in view.steps} == {a.peer_id}  # delegated: c has no tools
        assert view.outputs == {"here": "keys-remote/here", "there": "keys-remote/there"}
        nursery.cancel_scope.cancel()


async def test_canceling_a_workflow_stops_its_step_on_the_delegatee(tmp_path: Path) -> None:
    """c delegates a 60 s step to a, then the workflow is canceled on c: c sends a handoff
    ``cancel``; a stops the Ray task (its worker is killed after the grace period), journals
    the handoff CANCELED, and a re-attach with the same handoff id is told so (no rerun)."""
    a = make_node(tmp_path, "a", "util")
    async with trio.open_nursery() as nursery:
        c, _ = await launch_delegator(nursery, tmp_path, a)
        await wait_until(_ray_idle, what="an idle Ray (earlier tests' workers stopped)")
        wid, _ = await c.workflows.submit(parse_workflow(NAP_60), {}, "nap-cancel")
        await wait_until(lambda: a.handoff.running == 1, what="a running the step")
        await wait_until(lambda: not _ray_idle(), what="the step's Ray task running on a")
        hid = f"{wid}/nap@{a.peer_id}"
        await wait_until(  # (journaled as accepted once it has run for a moment)
            lambda: a.journal.get_handoff(hid, direction="in", peer=c.peer_id) is not None,
            what="the accepted step journaled",
        )

        canceled_at = time.monotonic()
        view = await c.workflows.cancel(wid)
        assert view.status is WorkflowStatus.CANCELED
        assert view.steps[0].status == "CANCELED" and view.steps[0].node == a.peer_id
        await wait_until(lambda: a.handoff.settled, timeout_s=8, what="a stopping the step")
        assert time.monotonic() - canceled_at < 6  # the 2 s grace, then the worker is killed
        stored = a.journal.get_handoff(hid, direction="in", peer=c.peer_id)
        assert stored is not None and stored.status == "CANCELED", stored
        assert stored.error is not None and "canceled by its delegator" in stored.error
        assert stored.outputs is None  # the step did not complete
        assert a.handoff.canceled_jobs == 1
        # the Ray task is really gone, not just forgotten: its CPU is free again
        await wait_until(_ray_idle, timeout_s=5, what="the step's Ray CPU freed")

        # a later re-attach with the same handoff id is told "canceled"; nothing reruns
        offer = handoff.Offer(
            handoff_id=hid,
            workflow_id=wid,
            step="nap",
            tool="util.sleep",
            args={"seconds": 60},
            deadline_ms=120_000,
        )
        with pytest.raises(HandoffCanceledError, match="canceled by its delegator"):
            await delegate(
                c.host, a.peer_id, offer, network=c.config.network, config=c.config.handoff
            )
        assert a.handoff.started_jobs == 1 and a.handoff.running == 0
        nursery.cancel_scope.cancel()


async def test_a_failing_workflow_cancels_its_delegated_sibling_step(tmp_path: Path) -> None:
    """The same cancel when the workflow ends because another step failed."""
    a = make_node(tmp_path, "a", "util")
    wf = (
        "id: fail-fast\nsteps:\n"
        "  - name: nap\n    tool: util.sleep\n    inputs: [{name: seconds, value: 60}]\n"
        # runs 1 s, then fails: it does not return the output it declares
        "  - name: bad\n    tool: util.sleep\n    inputs: [{name: seconds, value: 1}]\n"
        "    outputs: [{name: missing}]\n"
    )
    async with trio.open_nursery() as nursery:
        c, _ = await launch_delegator(nursery, tmp_path, a)
        wid, _ = await c.workflows.submit(parse_workflow(wf), {}, "fail-fast-1")
        with trio.fail_after(20):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED, view
        assert "bad" in (view.error or "")
        # settled, not just stopped: the CANCELED row is committed after the job ends
        await wait_until(lambda: a.handoff.settled, timeout_s=8, what="a stopping the nap")
        stored = a.journal.get_handoff(f"{wid}/nap@{a.peer_id}", direction="in", peer=c.peer_id)
        assert stored is not None and stored.status == "CANCELED", stored
        nursery.cancel_scope.cancel()


async def test_handoff_cancel_on_the_offer_stream_on_a_fresh_stream_and_bad_cancels(
    tmp_path: Path,
) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    a = make_node(tmp_path, "a", "util")
    b = make_node(tmp_path, "b", "none")
    other = member_host(tmp_path, create_new_key_pair())

    def nap(hid: str) -> handoff.Offer:
        return handoff.Offer(
            handoff_id=hid,
            workflow_id="w",
            step=hid,
            tool="util.sleep",
            args={"seconds": 60},
            deadline_ms=120_000,
        )

    async with trio.open_nursery() as nursery, other.run(["/ip4/127.0.0.1/tcp/0"]):
        await launch(nursery, a)
        await launch(nursery, b)
        await b.host.connect(a.peer_id, a.host.addrs())
        await other.connect(a.peer_id, a.host.addrs())
        net, cfg = b.config.network, b.config.handoff

        # h-live: delegated as the executor does, by a task whose Abandon says "for good"
        abandon = Abandon()
        live_scope = trio.CancelScope()
        live_finished = trio.Event()
        live_completed = False

        async def run_live() -> None:
            nonlocal live_completed
            try:
                with live_scope, abandon_on_cancel(abandon):
                    await delegate(b.host, a.peer_id, nap("h-live"), network=net, config=cfg)
                    live_completed = True
            finally:
                live_finished.set()

        nursery.start_soon(run_live)

        # h-raw: offered on a raw stream that then sends a malformed cancel: a typed error and
        # a reset, but the step goes on (a lost stream never stops a step)
        raw = MessageStream(await b.host.open_stream(a.peer_id, handoff.PROTOCOL_ID), handoff.CODEC)
        await raw.send(nap("h-raw"))
        assert isinstance(await raw.receive(), handoff.Accept)
        await raw.stream.write(encode_frame({"type": "cancel", "handoff_id": "h-raw", "x": 1}))
        with trio.fail_after(5):
            while True:
                msg = await raw.receive(raise_errors=False)
                if not isinstance(msg, handoff.Heartbeat):
                    break
        assert msg.type == "error" and msg.code == "invalid_message"  # type: ignore[union-attr]
        await wait_until(lambda: a.handoff.running == 2, what="a running both steps")
        await trio.sleep(0.5)
        assert a.handoff.running == 2

        # another peer cannot cancel b's step: to it, the id is unknown
        reply = await cancel_handoff(other, a.peer_id, "h-raw", "mine now", network=net, config=cfg)
        assert isinstance(reply, handoff.NotCanceled) and reply.code == "unknown_handoff"
        assert a.handoff.running == 2

        # cancel both: h-live on its own stream, h-raw (stream gone) on a fresh one
        started = time.monotonic()
        fresh: list[handoff.Canceled | handoff.NotCanceled] = []

        async def cancel_raw() -> None:
            fresh.append(
                await cancel_handoff(b.host, a.peer_id, "h-raw", "test", network=net, config=cfg)
            )

        async with trio.open_nursery() as inner:
            inner.start_soon(cancel_raw)
            abandon.request("the test gave up")
            live_scope.cancel()
            with trio.fail_after(8):
                await live_finished.wait()
        assert time.monotonic() - started < 6
        assert not live_completed  # the delegating task was cancelled (after telling a)
        assert isinstance(abandon.reply, handoff.Canceled), abandon.reply
        assert "the test gave up" in abandon.reply.message
        assert isinstance(fresh[0], handoff.Canceled) and fresh[0].handoff_id == "h-raw"
        assert a.handoff.running == 0 and a.handoff.canceled_jobs == 2
        await wait_until(lambda: a.handoff.settled, what="the cancels journaled")
        for hid in ("h-live", "h-raw"):
            stored = a.journal.get_handoff(hid, direction="in", peer=b.peer_id)
            assert stored is not None and stored.status == "CANCELED", stored

        # idempotent: canceling again says canceled; re-offering says canceled, never reruns
        again = await cancel_handoff(b.host, a.peer_id, "h-live", "again", network=net, config=cfg)
        assert isinstance(again, handoff.Canceled)
        with pytest.raises(HandoffCanceledError):
            await delegate(b.host, a.peer_id, nap("h-raw"), network=net, config=cfg)

        # unknown and finished ids get a typed not_canceled; nothing else is touched
        reply = await cancel_handoff(b.host, a.peer_id, "nope", "", network=net, config=cfg)
        assert isinstance(reply, handoff.NotCanceled) and reply.code == "unknown_handoff"
        echo = handoff.Offer(
            handoff_id="h-done",
            workflow_id="w",
            step="e",
            tool="util.echo",
            args={"value": 7},
            deadline_ms=20_000,
        )
        with trio.fail_after(20):
            outcome = await delegate(b.host, a.peer_id, echo, network=net, config=cfg)
        assert outcome.outputs == {"result": 7}
        reply = await cancel_handoff(b.host, a.peer_id, "h-done", "", network=net, config=cfg)
        assert isinstance(reply, handoff.NotCanceled) and reply.code == "finished"
        await wait_until(lambda: a.handoff.settled, what="the outcome journaled")
        stored = a.journal.get_handoff("h-done", direction="in", peer=b.peer_id)
        assert stored is not None and stored.status == "SUCCESSFUL"

        # a malformed cancel as the first message: the usual typed error
        s = MessageStream(await b.host.open_stream(a.peer_id, handoff.PROTOCOL_ID), handoff.CODEC)
        await s.stream.write(encode_frame({"type": "cancel", "handoff_id": ""}))
        with trio.fail_after(5):
            err = await s.receive(raise_errors=False)
        assert err.type == "error" and err.code == "invalid_message"  # type: ignore[union-attr]
        assert a.handoff.started_jobs == 3  # h-live, h-raw, h-done: nothing ran twice
        nursery.cancel_scope.cancel()
