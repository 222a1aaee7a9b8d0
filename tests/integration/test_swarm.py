"""Real libp2p hosts on 127.0.0.1 (port 0) in one trio run, with a real Ray."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
import trio

from node.client import request
from node.errors import NodeUnreachableError, NotAuthorisedError, RequestFailedError
from node.handoff import HandoffLostError, HandoffRejectedError, delegate
from node.home import Home
from node.p2p import P2PHost
from protocols import control, discovery, handoff
from protocols.framing import encode_frame, encode_uvarint
from protocols.stream import MessageStream
from tests.integration.harness import launch, launch_demo_swarm, make_node, wait_until
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
        stored = a.journal.get_handoff("h-1")
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
    silent = P2PHost(key)

    async def accept_then_hang(stream: object) -> None:
        ms = MessageStream(stream, handoff.CODEC)  # type: ignore[arg-type]
        offer = await ms.receive()
        await ms.send(handoff.Accept(handoff_id=offer.handoff_id))  # type: ignore[union-attr]
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
        except NodeUnreachableError:
            pass  # the reset can also arrive while the protocol is being negotiated

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
        info = await request(own, addr, control.InfoRequest())
        assert info.peer_id == a.peer_id and "text.upper" in info.tools

        stranger = Home(tmp_path / "stranger")
        stranger.init()
        with pytest.raises(NotAuthorisedError, match="not authorised"):
            await request(stranger.load_client_key(), addr, control.InfoRequest())
        nursery.cancel_scope.cancel()


async def test_rogue_peer_cards_and_peer_ids_do_not_take_the_node_down(tmp_path: Path) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair

    from node.discovery import InvalidCardError

    a = make_node(tmp_path, "a", "math")
    rogue = P2PHost(create_new_key_pair())

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
        info = await request(own, a.host.addrs()[0], control.InfoRequest())
        assert info.peer_id == a.peer_id
        nursery.cancel_scope.cancel()


async def test_only_noise_and_yamux_are_accepted(tmp_path: Path) -> None:
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex

    a = make_node(tmp_path, "a", "none")
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
        wf = (
            "id: long\nsteps:\n  - name: nap\n    tool: util.sleep\n"
            "    inputs: [{name: seconds, value: 60}]\n"
        )
        sub = await request(key, addr, control.SubmitRequest(workflow=wf, workflow_id="long-1"))
        assert sub.created
        with trio.fail_after(20):
            while True:
                st = await request(key, addr, control.StatusRequest(workflow_id="long-1"))
                if st.steps[0].status == "RUNNING":
                    break
                await trio.sleep(0.05)
        reply = await request(key, addr, control.CancelRequest(workflow_id="long-1"))
        assert reply.status == "CANCELED"
        assert reply.steps[0].status == "CANCELED"
        res = await request(key, addr, control.ResultRequest(workflow_id="long-1", wait=True))
        assert res.status == "CANCELED" and res.outputs is None
        with pytest.raises(RequestFailedError, match="no workflow"):
            await request(key, addr, control.CancelRequest(workflow_id="nope"))
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
        await launch(nursery, a)
        c = make_node(tmp_path, "c", "none", bootstrap=a.host.addrs())
        c_scope = await launch(nursery, c)
        await wait_until(lambda: c.registry.has_fresh_card(a.peer_id), what="c learning a")
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
