"""The delegator's pool of idle handoff streams and its memory of peers' versions (pure
logic: the streams are stand-ins that record what is sent on them and their close)."""

from __future__ import annotations

from typing import Any

import trio

from node.handoff.sessions import (
    ACK_DEFER_S,
    PROTOCOL_IDS,
    RELEARN_S,
    HandoffStreams,
    carries_sessions,
)
from protocols import handoff
from protocols.errors import StreamClosedError


class FakeStream:
    def __init__(self, broken: bool = False) -> None:
        self.closed = False
        self.was_reset = False
        self.sent: list[Any] = []
        self.broken = broken

    async def send(self, message: Any) -> None:
        if self.broken:
            raise StreamClosedError("gone")
        self.sent.append(message)

    async def close(self) -> None:
        self.closed = True

    async def reset(self) -> None:
        self.was_reset = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ack(hid: str) -> handoff.Ack:
    return handoff.Ack(handoff_id=hid, epoch=0)


def test_versions_and_which_of_them_carry_sessions() -> None:
    assert PROTOCOL_IDS[0] == "/hivemesh/handoff/1.2.0"
    assert [carries_sessions(p) for p in PROTOCOL_IDS] == [True, False, False]
    clock = Clock()
    streams = HandoffStreams(clock=clock)
    assert streams.protocol_for("p") == PROTOCOL_IDS[0]
    assert streams.refused("p", PROTOCOL_IDS[0]) == PROTOCOL_IDS[1]
    assert streams.refused("p", PROTOCOL_IDS[1]) == PROTOCOL_IDS[2]
    assert streams.protocol_for("p") == PROTOCOL_IDS[2]
    assert streams.protocol_for("q") == PROTOCOL_IDS[0]
    assert streams.refused("p", PROTOCOL_IDS[2]) is None  # none left
    assert streams.protocol_for("p") == PROTOCOL_IDS[0]
    streams.refused("p", PROTOCOL_IDS[0])
    clock.now += RELEARN_S + 1  # it may have been upgraded meanwhile
    assert streams.protocol_for("p") == PROTOCOL_IDS[0]


def test_the_warmest_stream_is_taken_with_its_owed_ack_and_old_or_surplus_ones_go() -> None:
    clock = Clock()
    streams = HandoffStreams(idle_s=10, max_idle_per_peer=2, clock=clock)
    s1, s2, s3 = FakeStream(), FakeStream(), FakeStream()
    a: Any = streams
    a.give("p", s1, ack("h1"))
    clock.now += 1
    a.give("p", s2)
    a.give("p", s3, ack("h3"))  # over the bound: the oldest goes, its ack still to send
    assert streams.idle("p") == 2 and (s1, ack("h1")) in streams._closing
    assert streams.owed() == 1
    assert a.take("p") == (s3, ack("h3")) and a.take("p") == (s2, None)
    assert a.take("p") is None and streams.reused == 2 and streams.owed() == 0
    a.give("p", s2)
    clock.now += 10  # too old to trust
    assert a.take("p") is None and (s2, None) in streams._closing
    a.give("q", s3, ack("h4"))
    streams.forget("q")  # disconnected: nobody to send the ack to
    assert streams.idle() == 0 and streams.owed() == 0 and (s3, None) in streams._closing


def test_the_sweeper_sends_acks_nobody_took_and_closes_what_idled_too_long() -> None:
    clock = Clock()
    streams = HandoffStreams(idle_s=5, clock=clock)
    kept, old, broken = FakeStream(), FakeStream(), FakeStream(broken=True)
    a: Any = streams

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(streams.run)
            a.give("p", old, ack("old"))
            clock.now += 1
            a.give("p", kept, ack("kept"))
            a.give("r", broken, ack("lost"))
            clock.now += ACK_DEFER_S * 2
            await trio.sleep(ACK_DEFER_S * 5)
            # sent alone, and the streams kept (without a debt) for the next offer
            assert old.sent == [ack("old")] and kept.sent == [ack("kept")]
            assert streams.owed() == 0 and streams.idle("p") == 2 and streams.acks_alone == 2
            assert broken.was_reset and streams.idle("r") == 0  # a stream that broke goes
            # (their idle time counts from the ack: the delegatee's does too)
            clock.now += 1
            fresh = FakeStream()
            a.give("p", fresh)
            clock.now += 4.5  # old and kept are 5.5 s idle, fresh 4.5 s
            streams._wake.set()
            await trio.sleep(0.05)
            assert old.closed and kept.closed and not fresh.closed and streams.idle("p") == 1
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_stopping_node_sends_the_owed_acks_and_closes_its_kept_streams() -> None:
    streams = HandoffStreams()
    s1, s2 = FakeStream(), FakeStream()
    a: Any = streams
    a.give("p", s1, ack("h1"))
    a.give("q", s2)
    trio.run(streams.aclose)
    assert s1.sent == [ack("h1")] and s1.closed and s2.closed and s2.sent == []
    assert streams.idle() == 0 and streams.owed() == 0
