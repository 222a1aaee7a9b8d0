"""The delegator's pool of idle handoff streams and its memory of peers' versions (pure
logic: the streams are stand-ins that only record being closed)."""

from __future__ import annotations

from typing import Any

import trio

from node.handoff.sessions import PROTOCOL_IDS, RELEARN_S, HandoffStreams, carries_sessions


class FakeStream:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_versions_and_which_of_them_carry_sessions() -> None:
    assert PROTOCOL_IDS[0] == "/hivemesh/handoff/1.2.0"
    assert [carries_sessions(p) for p in PROTOCOL_IDS] == [True, False, False]
    clock = Clock()
    streams = HandoffStreams(clock=clock)
    assert streams.protocol_for("p") == PROTOCOL_IDS[0]
    assert streams.refused("p", PROTOCOL_IDS[0]) == PROTOCOL_IDS[1]
    assert streams.refused("p", PROTOCOL_IDS[1]) == PROTOCOL_IDS[2]
    assert (
        streams.protocol_for("p") == PROTOCOL_IDS[2]
        and streams.protocol_for("q") == PROTOCOL_IDS[0]
    )
    assert streams.refused("p", PROTOCOL_IDS[2]) is None  # none left
    assert streams.protocol_for("p") == PROTOCOL_IDS[0]
    streams.refused("p", PROTOCOL_IDS[0])
    clock.now += RELEARN_S + 1  # it may have been upgraded meanwhile
    assert streams.protocol_for("p") == PROTOCOL_IDS[0]


def test_the_warmest_stream_is_taken_and_old_or_surplus_ones_are_closed() -> None:
    clock = Clock()
    streams = HandoffStreams(idle_s=10, max_idle_per_peer=2, clock=clock)
    s1, s2, s3 = FakeStream(), FakeStream(), FakeStream()
    a: Any = streams
    a.give("p", s1)
    clock.now += 1
    a.give("p", s2)
    a.give("p", s3)  # over the bound: the oldest goes
    assert streams.idle("p") == 2 and s1 in [m for m in streams._closing]
    assert a.take("p") is s3 and a.take("p") is s2 and a.take("p") is None
    assert streams.reused == 2
    a.give("p", s2)
    clock.now += 10  # too old to trust
    assert a.take("p") is None and s2 in streams._closing
    a.give("q", s3)
    streams.forget("q")
    assert streams.idle() == 0 and s3 in streams._closing


def test_the_sweeper_closes_what_was_let_go_and_what_idled_too_long() -> None:
    clock = Clock()
    streams = HandoffStreams(idle_s=0.05, clock=clock)
    kept, old = FakeStream(), FakeStream()
    a: Any = streams

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(streams.run)
            a.give("p", old)
            clock.now += 1
            a.give("p", kept)
            await trio.sleep(0.1)
            assert old.closed and not kept.closed and streams.idle("p") == 1
            clock.now += 1
            await trio.sleep(0.1)
            assert kept.closed and streams.idle() == 0
            nursery.cancel_scope.cancel()

    trio.run(main)
