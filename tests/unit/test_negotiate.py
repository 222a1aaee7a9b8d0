"""Inbound multistream-select (node/p2p/negotiate.py) against scripted dialers: a lazy one
(header, proposal and first message in one piece: the answer is left for the handler's first
write), one that waits for every answer (it gets each before it is asked for more), and
dialers that break the protocol (a typed refusal)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from libp2p.utils.varint import encode_delim

from node.p2p.negotiate import MAX_PROPOSALS, NegotiationError, negotiate

HEADER = encode_delim(b"/multistream/1.0.0")
OURS = ["/hivemesh/handoff/1.1.0", "/hivemesh/control/0.5.0"]


def line(text: str) -> bytes:
    return encode_delim(text.encode())


class Dialer:
    """Delivers ``pieces`` one per read (then EOF); records what was written before each
    read, so a test sees whether an answer came before the dialer was asked for more."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)
        self.reads = 0
        self.written: list[tuple[int, bytes]] = []  # (reads done before the write, bytes)

    async def read(self, n: int) -> bytes:
        self.reads += 1
        return self.pieces.pop(0) if self.pieces else b""

    async def write(self, data: bytes) -> None:
        self.written.append((self.reads, data))


async def test_a_lazy_dialer_gets_the_answer_with_the_first_reply() -> None:
    dialer = Dialer(HEADER + line(OURS[0]) + b"\x05offer")
    agreed = await negotiate(dialer, OURS, timeout_s=5)
    assert agreed is not None
    assert (agreed.protocol, agreed.leftover) == (OURS[0], b"\x05offer")
    assert agreed.unsent == HEADER + line(OURS[0])
    assert dialer.written == [] and dialer.reads == 1


async def test_a_dialer_that_waits_gets_each_answer_before_it_must_say_more() -> None:
    dialer = Dialer(HEADER, line(OURS[1]))
    agreed = await negotiate(dialer, OURS, timeout_s=5)
    assert agreed is not None
    assert (agreed.protocol, agreed.leftover, agreed.unsent) == (OURS[1], b"", None)
    assert dialer.written == [(1, HEADER), (2, line(OURS[1]))]


async def test_an_unknown_protocol_is_refused_and_the_next_proposal_accepted() -> None:
    dialer = Dialer(HEADER + line("/other/1"), line(OURS[0]) + b"rest")
    agreed = await negotiate(dialer, OURS, timeout_s=5)
    assert agreed is not None and agreed.protocol == OURS[0]
    # the header and "na" went out before the dialer was read again
    assert dialer.written == [(1, HEADER + line("na"))]
    assert (agreed.leftover, agreed.unsent) == (b"rest", line(OURS[0]))


async def test_ls_lists_the_protocols() -> None:
    dialer = Dialer(HEADER + line("ls"), line(OURS[0]))
    agreed = await negotiate(dialer, OURS, timeout_s=5)
    assert agreed is not None
    listing = ("\n".join(sorted(OURS)) + "\n").encode()
    assert dialer.written[0] == (1, HEADER + encode_delim(listing))


async def test_a_dialer_that_leaves_before_proposing_is_no_agreement() -> None:
    assert await negotiate(Dialer(), OURS, timeout_s=5) is None
    assert await negotiate(Dialer(HEADER), OURS, timeout_s=5) is None


async def test_a_silent_dialer_times_out(autojump_clock: trio.testing.MockClock) -> None:
    class Silent(Dialer):
        async def read(self, n: int) -> bytes:
            await trio.sleep_forever()
            raise AssertionError("unreachable")

    started = trio.current_time()
    assert await negotiate(Silent(), OURS, timeout_s=30) is None
    assert trio.current_time() - started == pytest.approx(30)


@pytest.mark.parametrize(
    ("pieces", "problem"),
    [
        ((line("GET / HTTP/1.1"),), "not multistream-select"),
        ((b"\x80\x80\x80\x01",), "too long"),
        ((bytes([0xFF, 0x7F]) + b"x" * 20,), "bytes"),
        ((HEADER + encode_delim(b"x" * 2000),), "bytes"),
        ((b"\x05abcde",), "newline"),
        ((HEADER + b"\x03\xff\xfe\n",), "UTF-8"),
        ((HEADER + b"".join(line(f"/p/{i}") for i in range(MAX_PROPOSALS)),), "proposed"),
    ],
)
async def test_a_dialer_that_breaks_the_protocol_gets_a_typed_refusal(
    pieces: tuple[bytes, ...], problem: str
) -> None:
    with pytest.raises(NegotiationError, match=problem):
        await negotiate(Dialer(*pieces), OURS, timeout_s=5)
