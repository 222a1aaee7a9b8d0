"""Handoff 1.2.0 on real nodes: one stream carries one exchange after another, a quick
step's result takes the place of its accept, a kept stream the peer closed is replaced, and a
peer that speaks only an older version is offered that one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from node.daemon import Node
from node.handoff import HandoffRejectedError, delegate
from node.handoff.sessions import HandoffStreams
from node.p2p import P2PStream
from protocols import handoff
from protocols.framing import FrameDecoder, encode_frame
from protocols.stream import MessageStream
from tests.integration.harness import launch, make_node, member_host, wait_until

pytestmark = pytest.mark.usefixtures("ray_cluster")


@asynccontextmanager
async def _pair(tmp_path: Path, **a_handoff: Any) -> AsyncIterator[tuple[Node, Node, trio.Nursery]]:
    """``a`` (util tools, its handoff section overridden by ``a_handoff``) and ``b`` (no
    tools), running and connected; stopped at the end."""
    a = make_node(tmp_path, "a", "util", handoff=a_handoff)
    b = make_node(tmp_path, "b", "none")
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        await launch(nursery, b)
        await b.host.connect(a.peer_id, a.host.addrs())
        yield a, b, nursery
        nursery.cancel_scope.cancel()


def _echo(hid: str, value: Any = 1, **extra: Any) -> handoff.Offer:
    return handoff.Offer(
        handoff_id=hid,
        workflow_id="w",
        step=hid,
        tool="util.echo",
        args={"value": value},
        deadline_ms=20_000,
        **extra,
    )


async def test_one_stream_carries_one_handoff_after_another(tmp_path: Path) -> None:
    streams = HandoffStreams()
    async with _pair(tmp_path) as (a, b, _):
        net, cfg = b.config.network, b.config.handoff
        for i in range(5):
            outcome = await delegate(
                b.host, a.peer_id, _echo(f"h{i}", i), network=net, config=cfg, streams=streams
            )
            assert outcome.outputs == {"result": i}
        assert (streams.opened, streams.reused) == (1, 4)
        assert streams.idle(a.peer_id) == 1
        await wait_until(lambda: a.handoff.settled, what="the outcomes journaled")
        for i in range(5):
            stored = a.journal.get_handoff(f"h{i}", direction="in", peer=b.peer_id)
            assert stored is not None and stored.status == "SUCCESSFUL", stored
        assert a.handoff.started_jobs == 5

        # a rejection ends an exchange cleanly too: the stream carries the next offer
        with pytest.raises(HandoffRejectedError) as info:
            await delegate(
                b.host,
                a.peer_id,
                _echo("h-none").model_copy(update={"tool": "no.such"}),
                network=net,
                config=cfg,
                streams=streams,
            )
        assert info.value.code == "no_such_tool"
        outcome = await delegate(
            b.host, a.peer_id, _echo("h-after", "x"), network=net, config=cfg, streams=streams
        )
        assert outcome.outputs == {"result": "x"} and streams.opened == 1
        # each ack went out with the next offer on the stream (no sweeper runs here): all
        # five results were acknowledged, and the last exchange's ack is still owed
        await wait_until(
            lambda: all(
                (r := a.journal.get_handoff(f"h{i}", direction="in", peer=b.peer_id)) is not None
                and r.acked_at is not None
                for i in range(5)
            ),
            what="the acks that travelled with the next offers recorded",
        )
        assert streams.owed() == 1 and streams.acks_alone == 0


async def test_raw_exchanges_on_one_stream_and_garbage_in_the_second(tmp_path: Path) -> None:
    """What a 1.2.0 delegator sees on the wire: a quick step's ``result`` may come without an
    ``accept`` (the machine's unit tests pin that rule); after the ``ack`` the same stream
    takes the next offer (and an ack may travel in the same write as that offer); garbage in
    a later exchange gets the usual typed error, and the node keeps serving."""
    async with _pair(tmp_path) as (a, b, _):
        net, cfg = b.config.network, b.config.handoff
        await delegate(b.host, a.peer_id, _echo("warm-up"), network=net, config=cfg)
        ms = MessageStream(await b.host.open_stream(a.peer_id, handoff.PROTOCOL_ID), handoff.CODEC)
        await ms.send(_echo("r1", 1))
        first = await ms.receive_within(10)
        if isinstance(first, handoff.Accept):  # (a loaded machine: the step took > 50 ms)
            first = await ms.receive_within(10)
        assert isinstance(first, handoff.StepResult) and first.outputs == {"result": 1}
        # the ack and the next offer in one write
        ack = handoff.Ack(handoff_id="r1", epoch=0).model_dump(mode="json")
        data = encode_frame(ack) + encode_frame(_echo("r2", 2).model_dump(mode="json"))
        await ms.stream.write(data)
        second = await ms.receive_within(10)
        if isinstance(second, handoff.Accept):
            second = await ms.receive_within(10)
        assert isinstance(second, handoff.StepResult) and second.outputs == {"result": 2}
        await ms.send(handoff.Ack(handoff_id="r2", epoch=0))
        await wait_until(
            lambda: (
                (r := a.journal.get_handoff("r1", direction="in", peer=b.peer_id)) is not None
                and r.acked_at is not None
            ),
            what="the first ack recorded",
        )
        # a third exchange that starts with garbage: a typed error, then the stream is reset
        await ms.stream.write(encode_frame({"type": "offer", "handoff_id": 5}))
        reply = await ms.receive_within(10, raise_errors=False)
        assert reply.type == "error" and reply.code == "invalid_message", reply  # type: ignore[union-attr]
        # the node serves the next stream as before
        again = MessageStream(
            await b.host.open_stream(a.peer_id, handoff.PROTOCOL_ID), handoff.CODEC
        )
        await again.send(_echo("r3", 3))
        third = await again.receive_within(10)
        assert isinstance(third, handoff.StepResult) and third.outputs == {"result": 3}
        await again.reset()


async def test_a_slow_step_is_accepted_first_and_a_kept_stream_the_peer_closed_is_replaced(
    tmp_path: Path,
) -> None:
    streams = HandoffStreams(idle_s=60)  # keeps the stream longer than ``a`` does
    async with _pair(tmp_path, session_idle_s=0.3) as (a, b, nursery):
        nursery.start_soon(streams.run)  # (it sends the acks no next offer took along)
        net, cfg = b.config.network, b.config.handoff
        nap = handoff.Offer(
            handoff_id="nap",
            workflow_id="w",
            step="nap",
            tool="util.sleep",
            args={"seconds": 0.3},
            deadline_ms=20_000,
        )
        outcome = await delegate(b.host, a.peer_id, nap, network=net, config=cfg, streams=streams)
        assert outcome.rtt_ms > 0  # measured at the accept, which came first
        assert streams.idle(a.peer_id) == 1
        await trio.sleep(1.0)  # ``a`` closes the idle stream
        outcome = await delegate(
            b.host, a.peer_id, _echo("after-idle", 7), network=net, config=cfg, streams=streams
        )
        assert outcome.outputs == {"result": 7}
        assert (streams.opened, streams.reused) == (2, 1)  # the kept one was found closed
        assert a.handoff.started_jobs == 2  # and the offer ran once


def _old_delegatee(tmp_path: Path, protocol: str, got: list[dict[str, Any]]) -> Any:
    """A bare host that speaks only ``protocol`` of handoff and rejects every offer, keeping
    the JSON it received."""
    host = member_host(tmp_path)

    async def on_offer(stream: P2PStream) -> None:
        decoder = FrameDecoder()
        frames: list[dict[str, Any]] = []
        while not frames:
            data = await stream.read(65536)
            if not data:
                return
            frames.extend(decoder.feed(data))
        got.append(frames[0])
        reject = handoff.Reject(
            handoff_id=str(frames[0].get("handoff_id")), code="overloaded", message="old and busy"
        )
        await stream.write(encode_frame(reject.model_dump(mode="json")))
        await stream.close()

    host.set_handler(protocol, on_offer)
    return host


@pytest.mark.parametrize("old", ["/hivemesh/handoff/1.1.0", "/hivemesh/handoff/1.0.0"])
async def test_a_peer_that_speaks_an_older_version_is_offered_that_one(
    tmp_path: Path, old: str
) -> None:
    b = make_node(tmp_path, "b", "none")
    got: list[dict[str, Any]] = []
    peer = _old_delegatee(tmp_path, old, got)
    streams = HandoffStreams()
    async with trio.open_nursery() as nursery, peer.run(["/ip4/127.0.0.1/tcp/0"]):
        await launch(nursery, b)
        await b.host.connect(peer.peer_id, peer.addrs())
        net, cfg = b.config.network, b.config.handoff
        for hid in ("o1", "o2"):
            with pytest.raises(HandoffRejectedError) as info:
                await delegate(
                    b.host, peer.peer_id, _echo(hid), network=net, config=cfg, streams=streams
                )
            assert info.value.code == "overloaded" and "old and busy" in info.value.message
        assert streams.protocol_for(peer.peer_id) == old  # learned once
        assert [g["handoff_id"] for g in got] == ["o1", "o2"]
        assert streams.idle(peer.peer_id) == 0  # an old stream carries one exchange
        if old.endswith("1.0.0"):
            # what 1.0.0 does not define is not sent (its objects are closed)
            assert "package" not in got[0] and "parameters" not in got[0]
            with pytest.raises(HandoffRejectedError, match=r"speaks handoff 1\.0\.0 only"):
                await delegate(
                    b.host,
                    peer.peer_id,
                    _echo("o3", package="left-pad==1.0"),
                    network=net,
                    config=cfg,
                    streams=streams,
                )
            assert len(got) == 2  # refused here: nothing was sent
        # without a pool of streams, the fallback is found on every call
        with pytest.raises(HandoffRejectedError, match="old and busy"):
            await delegate(b.host, peer.peer_id, _echo("o4"), network=net, config=cfg)
        assert json.dumps(got[-1]).count("o4") == 2  # its handoff_id and step
        nursery.cancel_scope.cancel()


async def test_idle_streams_are_let_go_and_a_stream_left_idle_is_closed_by_the_delegatee(
    tmp_path: Path,
) -> None:
    streams = HandoffStreams(idle_s=0.2)
    async with _pair(tmp_path, session_idle_s=0.5) as (a, b, nursery):
        nursery.start_soon(streams.run)
        net, cfg = b.config.network, b.config.handoff
        await delegate(b.host, a.peer_id, _echo("i1"), network=net, config=cfg, streams=streams)
        assert streams.idle(a.peer_id) == 1
        await wait_until(lambda: streams.idle() == 0, timeout_s=3, what="the idle stream closed")
        # a peer that opens a stream, finishes an exchange, and then says nothing more is cut
        # off after the delegatee's idle limit
        ms = MessageStream(await b.host.open_stream(a.peer_id, handoff.PROTOCOL_ID), handoff.CODEC)
        await ms.send(_echo("i2"))
        assert isinstance(await ms.receive_within(10), handoff.StepResult)
        await ms.send(handoff.Ack(handoff_id="i2", epoch=0))
        with trio.fail_after(5):
            assert await ms.receive_or_eof() is None  # closed by ``a``
        await ms.reset()


async def test_offers_on_one_stream_count_against_the_sender_s_rate_each(tmp_path: Path) -> None:
    """Reusing a stream is no way around the offer rate: every exchange's first message is
    counted; over the rate, a typed reject, and the stream (and node) serve on."""
    streams = HandoffStreams()
    async with _pair(tmp_path, max_offers_per_minute=3) as (a, b, _):
        net, cfg = b.config.network, b.config.handoff
        for i in range(3):
            await delegate(
                b.host, a.peer_id, _echo(f"q{i}"), network=net, config=cfg, streams=streams
            )
        with pytest.raises(HandoffRejectedError) as info:
            await delegate(b.host, a.peer_id, _echo("q3"), network=net, config=cfg, streams=streams)
        assert info.value.code == "quota_exceeded" and info.value.retry_after_s is not None
        assert (streams.opened, streams.reused) == (1, 3) and a.handoff.started_jobs == 3
