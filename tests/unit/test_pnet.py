"""The private-network layer on in-memory connections: wire format, and how each kind of
non-member is recognised. (Real hosts: tests/integration/test_private_swarm.py.)"""

from __future__ import annotations

import logging
import os

import pytest
import trio
import trio.testing
from libp2p.abc import IRawConnection
from libp2p.connection_types import ConnectionType
from multiaddr import Multiaddr

from node.p2p.pnet import (
    CLOSED,
    KEYED_PEER,
    MULTISTREAM_HEADER,
    NO_KEY,
    OTHER_KEY,
    GuardedConnection,
    PrivateNetworkRefused,
    RefusalLog,
    protect,
    silent,
)
from node.p2p.xsalsa20 import XSalsa20
from node.swarmkey import SwarmKey

KEY = SwarmKey(bytes(range(32)))
OTHER = SwarmKey(bytes(range(1, 33)))


class MemoryRaw(IRawConnection):
    """One end of an in-memory connection; ``sent`` records every byte written to the wire."""

    def __init__(self, stream: trio.abc.Stream, initiator: bool) -> None:
        self._stream = stream
        self.is_initiator = initiator
        self.sent = bytearray()

    async def write(self, data: bytes) -> None:
        self.sent += data
        await self._stream.send_all(data)

    async def read(self, n: int | None = None) -> bytes:
        return await self._stream.receive_some(n)

    async def close(self) -> None:
        await self._stream.aclose()

    def get_remote_address(self) -> tuple[str, int] | None:
        return ("127.0.0.1", 4001)

    def get_transport_addresses(self) -> list[Multiaddr]:
        return []

    def get_connection_type(self) -> ConnectionType:
        return ConnectionType.DIRECT


def pair() -> tuple[MemoryRaw, MemoryRaw]:
    a, b = trio.testing.memory_stream_pair()
    return MemoryRaw(a, True), MemoryRaw(b, False)


async def read_exactly(conn: GuardedConnection, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = await conn.read(n - len(out))
        assert chunk, "unexpected EOF"
        out += chunk
    return out


async def both(
    a: MemoryRaw, b: MemoryRaw, key_a: SwarmKey | None, key_b: SwarmKey | None, **kw: bytes
) -> tuple[GuardedConnection, GuardedConnection]:
    """Run ``protect`` on both ends at once (each sends before it reads)."""
    out: dict[str, GuardedConnection] = {}

    async def side(name: str, raw: MemoryRaw, key: SwarmKey | None) -> None:
        out[name] = await protect(raw, key, timeout_s=5, nonce=kw.get(f"nonce_{name}"))

    async with trio.open_nursery() as n:
        n.start_soon(side, "a", a, key_a)
        n.start_soon(side, "b", b, key_b)
    return out["a"], out["b"]


async def test_members_talk_and_the_wire_is_the_spec_format() -> None:
    a, b = pair()
    nonce_a, nonce_b = os.urandom(24), os.urandom(24)
    ga, gb = await both(a, b, KEY, KEY, nonce_a=nonce_a, nonce_b=nonce_b)
    payload_a = MULTISTREAM_HEADER + b"\x07/noise\n" + b"x" * 1000
    payload_b = MULTISTREAM_HEADER + b"\x07/noise\n"
    await ga.write(payload_a)
    await gb.write(payload_b)
    assert await read_exactly(gb, len(payload_a)) == payload_a
    assert await read_exactly(ga, len(payload_b)) == payload_b
    # Each side sent its 24-byte nonce, then its bytes XORed with XSalsa20(key, own nonce).
    assert bytes(a.sent) == nonce_a + XSalsa20(KEY.secret, nonce_a).xor(payload_a)
    assert bytes(b.sent) == nonce_b + XSalsa20(KEY.secret, nonce_b).xor(payload_b)


async def test_reads_of_any_size_after_the_check() -> None:
    a, b = pair()
    ga, gb = await both(a, b, KEY, KEY)
    await ga.write(MULTISTREAM_HEADER + b"abcdef")
    assert await gb.read(1) == MULTISTREAM_HEADER[:1]
    assert await read_exactly(gb, 19) == MULTISTREAM_HEADER[1:]
    assert await read_exactly(gb, 6) == b"abcdef"


async def expect_refusal(conn: GuardedConnection, reason: str) -> None:
    with pytest.raises(PrivateNetworkRefused) as info:
        await conn.read(100)
    assert info.value.reason == reason
    assert conn.failure is info.value


async def test_a_different_key_is_recognised_by_both_sides() -> None:
    a, b = pair()
    ga, gb = await both(a, b, KEY, OTHER)
    await ga.write(MULTISTREAM_HEADER)
    await gb.write(MULTISTREAM_HEADER)
    await expect_refusal(gb, OTHER_KEY)
    await expect_refusal(ga, OTHER_KEY)


async def test_a_peer_without_a_key_is_recognised_from_its_clear_header() -> None:
    a, b = pair()
    await a.write(MULTISTREAM_HEADER)  # a plain libp2p peer starts with this, in clear
    with pytest.raises(PrivateNetworkRefused) as info:
        await protect(b, KEY, timeout_s=5)
    assert info.value.reason == NO_KEY


async def test_an_open_node_recognises_a_keyed_peer() -> None:
    a, b = pair()
    await a.write(os.urandom(24))  # a keyed peer starts with its nonce
    open_side = await protect(b, None, timeout_s=5)
    await expect_refusal(open_side, KEYED_PEER)


async def test_open_nodes_talk_in_clear() -> None:
    a, b = pair()
    ga, gb = await both(a, b, None, None)
    await ga.write(MULTISTREAM_HEADER + b"hello")
    assert await read_exactly(gb, 25) == MULTISTREAM_HEADER + b"hello"
    assert bytes(a.sent) == MULTISTREAM_HEADER + b"hello"


async def test_a_peer_that_closes_mid_handshake() -> None:
    a, b = pair()
    await a.write(b"\x01\x02\x03")
    await a.close()
    with pytest.raises(PrivateNetworkRefused) as info:
        await protect(b, KEY, timeout_s=5)
    assert info.value.reason == CLOSED


async def test_silence_is_bounded_by_the_timeout(autojump_clock: trio.abc.Clock) -> None:
    _a, b = pair()
    start = trio.current_time()
    with pytest.raises(PrivateNetworkRefused) as info:
        await protect(b, KEY, timeout_s=1.5)
    assert info.value.reason == silent(1.5) == "it sent no handshake within 1.5s"
    assert trio.current_time() - start == pytest.approx(1.5)


async def test_the_timeout_covers_the_first_bytes_too(autojump_clock: trio.abc.Clock) -> None:
    a, b = pair()
    start = trio.current_time()
    await a.write(os.urandom(24))  # a nonce, then nothing
    guarded = await protect(b, KEY, timeout_s=2)
    await trio.sleep(0.5)
    await expect_refusal(guarded, silent(2))
    assert trio.current_time() - start == pytest.approx(2)


def test_refusal_log_is_bounded_and_counts_what_it_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    logger = logging.getLogger("test.pnet.refusals")
    refusals = RefusalLog(burst=2, window_s=60, clock=lambda: now[0], logger=logger)
    with caplog.at_level(logging.WARNING, logger="test.pnet.refusals"):
        for port in range(5):
            refusals.refused(f"127.0.0.1:{port}", OTHER_KEY)
        now[0] = 61.0
        refusals.refused("127.0.0.1:9", NO_KEY)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused connection from 127.0.0.1:0: it did not complete the private-network "
        "handshake (not a member of this swarm: it holds a different swarm key)",
        "refused connection from 127.0.0.1:1: it did not complete the private-network "
        "handshake (not a member of this swarm: it holds a different swarm key)",
        "refused connection from 127.0.0.1:9: it did not complete the private-network "
        "handshake (not a member of this swarm: it has no swarm key) "
        "(3 more refused connections were not logged)",
    ]
