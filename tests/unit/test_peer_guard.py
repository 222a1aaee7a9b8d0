"""PeerGuard (node/p2p/guard.py), FrameMeter (protocols/framing.py) and the fault report of
MessageStream: pure logic, a fake clock."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from node.p2p.guard import GuardLimits, PeerGuard, StreamAccount
from protocols import control
from protocols.errors import FrameDecodeError, PeerOverLimitError, RemoteProtocolError
from protocols.framing import FrameDecoder, FrameMeter, encode_frame, encode_uvarint
from protocols.stream import MessageStream


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def guard(**limits: object) -> tuple[PeerGuard, Clock, list[tuple[str, str]]]:
    clock = Clock()
    bans: list[tuple[str, str]] = []
    g = PeerGuard(
        GuardLimits(**limits),  # type: ignore[arg-type]
        clock=clock,
        on_ban=lambda p, r: bans.append((p, r)),
    )
    return g, clock, bans


# -- streams ----------------------------------------------------------------------------------


def test_streams_per_peer_are_bounded_and_each_refusal_is_a_strike() -> None:
    g, _, bans = guard(max_streams_per_peer=3, max_streams_total=100, strikes_before_ban=2)
    assert all(g.open_stream("a").admitted for _ in range(3))
    refused = g.open_stream("a")
    assert not refused.admitted and "over 3 streams" in refused.reason
    assert bans == []
    g.open_stream("a")  # the second strike bans
    assert bans and bans[0][0] == "a"
    assert g.ban_of("a") is not None
    # another peer is not affected
    assert g.open_stream("b").admitted
    # closing gives streams back
    for _ in range(3):
        g.close_stream("a")
    assert g.streams_of("a") == 0 and g.streams_total == 1


def test_over_the_total_a_light_peer_makes_room_and_the_heavy_one_is_refused() -> None:
    g, _, _ = guard(max_streams_per_peer=8, max_streams_total=10, strikes_before_ban=100)
    for _ in range(8):
        assert g.open_stream("heavy").admitted
    assert g.open_stream("b").admitted and g.open_stream("b").admitted  # total 10
    # the heavy peer is refused (and struck: it holds more than the mean)
    refused = g.open_stream("heavy")
    assert not refused.admitted and refused.evict is None
    # a peer holding fewer is admitted; the heavy peer must give one up
    light = g.open_stream("c")
    assert light.admitted and light.evict == "heavy"


def test_a_light_peer_refused_over_the_total_gets_no_strike() -> None:
    g, _, bans = guard(max_streams_per_peer=6, max_streams_total=10, strikes_before_ban=1)
    for peer in ("a", "b"):
        for _ in range(5):
            assert g.open_stream(peer).admitted
    # "a" holds the mean exactly: refused, not struck
    assert not g.open_stream("a").admitted
    assert bans == []


def test_a_ban_ends_and_strikes_out_of_the_window_are_forgotten() -> None:
    g, clock, bans = guard(strikes_before_ban=3, strike_window_s=10, ban_s=60)
    g.strike("p", "x")
    g.strike("p", "x")
    clock.now += 11  # both out of the window
    assert not g.strike("p", "x")
    assert g.strike("p", "x") is False
    assert g.strike("p", "garbage") is True
    assert bans == [("p", "garbage")]
    assert not g.open_stream("p").admitted
    clock.now += 61
    assert g.ban_of("p") is None and g.open_stream("p").admitted


def test_refusals_of_a_banned_peer_are_logged_once_a_minute() -> None:
    g, clock, _ = guard(strikes_before_ban=1, ban_s=600)
    g.strike("p", "x")
    assert g.refusal_to_log("p") is not None
    assert g.refusal_to_log("p") is None
    clock.now += 61
    ban = g.refusal_to_log("p")
    assert ban is not None and ban.refused == 3


def test_tables_stay_bounded_with_many_keys() -> None:
    g, _, _ = guard(max_tracked_peers=50, strikes_before_ban=1)
    for i in range(1000):
        g.strike(f"p{i}", "x")
    assert len(g._bans) <= 50 and len(g._strikes) <= 50


def test_a_disabled_guard_refuses_nothing_and_bans_nobody() -> None:
    g, _, bans = guard(max_streams_per_peer=1, max_streams_total=1, enabled=False)
    assert all(g.open_stream("a").admitted for _ in range(10))
    assert g.charge("a", 10**9) is None
    assert not g.strike("a", "x") and bans == []


# -- pending bytes --------------------------------------------------------------------------


def test_pending_bytes_are_bounded_per_peer_and_in_total() -> None:
    mib = 1024 * 1024
    g, _, _ = guard(
        max_pending_bytes_per_peer=2 * mib, max_pending_bytes_total=3 * mib, strikes_before_ban=9
    )
    assert g.charge("a", 2 * mib) is None
    assert "bytes of unfinished frames at once" in (g.charge("a", 1) or "")
    assert g.charge("b", mib) is None
    assert "of all peers" in (g.charge("c", 1) or "")
    g.charge("a", -2 * mib)
    assert g.pending_total == mib and g.charge("c", 1) is None
    g.charge("c", -10)  # never below zero
    assert g.pending_of("c") == 0 and g.pending_total == mib


def test_stream_account_meters_unfinished_frames_and_gives_them_back() -> None:
    g, _, _ = guard(max_pending_bytes_per_peer=2048, max_pending_bytes_total=4096)
    account = StreamAccount(g, "p")
    account.received(encode_uvarint(4000) + b"x" * 1000)
    assert g.pending_of("p") == 2 + 1000
    with pytest.raises(PeerOverLimitError):
        account.received(b"x" * 1100)
    account.close()
    assert g.pending_of("p") == 0 and g.pending_total == 0


# -- FrameMeter -----------------------------------------------------------------------------


@given(
    st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6),
    st.integers(1, 50),
    st.data(),
)
def test_frame_meter_counts_what_a_decoder_holds(
    payloads: list[bytes], chunk: int, data: st.DataObject
) -> None:
    wire = b"".join(encode_uvarint(len(p)) + p for p in payloads)
    wire = wire[: data.draw(st.integers(0, len(wire)))]
    meter = FrameMeter()
    decoder = FrameDecoder(max_frame_size=10_000)
    for i in range(0, len(wire), chunk):
        piece = wire[i : i + chunk]
        meter.feed(piece)
        try:
            decoder.feed(piece)
        except FrameDecodeError:
            return  # the payloads are not JSON: the decoder stops there
        assert meter.pending == decoder.buffered


def test_frame_meter_counts_a_trickle_after_a_large_prefix() -> None:
    meter = FrameMeter()
    assert meter.feed(encode_uvarint(4 * 1024 * 1024)) == 4
    for _ in range(10):
        meter.feed(b"a" * 100)
    assert meter.pending == 1004
    assert meter.feed(encode_frame({"type": "x"})[:1]) == 1005


# -- MessageStream reports garbage to a stream that wants to hear of it ---------------------


class Reporting:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.faults: list[Exception] = []

    async def read(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out

    async def write(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        pass

    async def reset(self) -> None:
        pass

    def peer_fault(self, error: Exception) -> None:
        self.faults.append(error)


@pytest.mark.parametrize(
    "wire",
    [b"\x05hello", encode_frame({"type": "nope"}), b"\x80\x00", encode_uvarint(1 << 40)],
)
def test_message_stream_reports_garbage(wire: bytes) -> None:
    stream = Reporting(wire)
    ms = MessageStream(stream, control.REQUEST_CODEC)
    with pytest.raises(RemoteProtocolError):  # RemoteProtocolError
        trio.run(ms.receive)
    assert len(stream.faults) == 1


@pytest.mark.parametrize("wire", [b"", encode_frame({"type": "info"})[:5]])
def test_message_stream_does_not_report_an_early_close(wire: bytes) -> None:
    """Nothing, or a frame cut short: a peer that died looks like that on yamux."""
    stream = Reporting(wire)
    ms = MessageStream(stream, control.REQUEST_CODEC)
    with pytest.raises(RemoteProtocolError):
        trio.run(ms.receive)
    assert stream.faults == []


def test_peers_with_too_many_unread_bytes_in_the_muxer_are_cut_heaviest_first() -> None:
    g, _, _ = guard(
        max_pending_bytes_per_peer=1024 * 1024,
        max_pending_bytes_total=2 * 1024 * 1024,
        strikes_before_ban=9,
    )
    assert g.over_buffered({"a": 1000, "b": 2000}) == []
    cut = g.over_buffered({"a": 2 * 1024 * 1024, "b": 900_000, "c": 900_000, "d": 10})
    assert [peer for peer, _ in cut] == ["a"]  # b + c + d stay under the total
    cut = g.over_buffered({"b": 1_000_000, "c": 900_000, "d": 900_000})
    assert [peer for peer, _ in cut] == ["b"]
