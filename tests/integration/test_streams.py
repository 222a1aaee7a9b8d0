"""Streams between real libp2p hosts on 127.0.0.1, as hivemesh opens them: negotiated lazily
(the protocol proposal travels with the first message) and with go-yamux's window updates
(:mod:`node.p2p.yamux_window`): small exchanges send no window update at all, and transfers of
many windows still flow both ways, read in small pieces or large."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.utils.varint import encode_delim

from node.p2p import P2PHost, P2PStream
from node.swarmkey import SwarmKey
from protocols.errors import StreamClosedError

ECHO = "/test/echo/1"
DIGEST = "/test/digest/1"
YAMUX_LOG = "libp2p.stream_muxer.yamux.yamux"


def host(key: SwarmKey) -> P2PHost:
    return P2PHost(create_new_key_pair(), swarm_key=key, shutdown_timeout_s=2.0)


async def read_exactly(stream: P2PStream, n: int, chunk: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = await stream.read(min(chunk, n - len(out)))
        assert data, f"the stream ended after {len(out)} of {n} bytes"
        out += data
    return bytes(out)


async def echo(stream: P2PStream) -> None:
    while data := await stream.read(65536):
        await stream.write(data)
    await stream.close()


async def digest(stream: P2PStream) -> None:
    """Reads 8 bytes of length, then that many bytes in small pieces; answers their SHA-256
    and then sends the same number of bytes back."""
    n = int.from_bytes(await read_exactly(stream, 8, 8), "big")
    data = await read_exactly(stream, n, 1000)
    await stream.write(hashlib.sha256(data).digest())
    for i in range(0, n, 100_000):
        await stream.write(data[i : i + 100_000])
    await stream.close()


@asynccontextmanager
async def pair(
    handlers: dict[str, Callable[[P2PStream], Awaitable[None]]],
) -> AsyncIterator[tuple[P2PHost, P2PHost]]:
    key = SwarmKey.generate()
    a, b = host(key), host(key)
    for protocol, handler in handlers.items():
        b.set_handler(protocol, handler)
    async with a.run(["/ip4/127.0.0.1/tcp/0"]), b.run(["/ip4/127.0.0.1/tcp/0"]):
        await a.connect_addr(b.addrs()[0])
        yield a, b


async def test_small_exchanges_send_no_window_update(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(30):
        async with pair({ECHO: echo}) as (a, b):
            with caplog.at_level(logging.DEBUG, logger=YAMUX_LOG):
                for i in range(20):
                    stream = await a.open_stream(b.peer_id, ECHO)
                    for _ in range(5):
                        await stream.write(b"x" * (i + 1) * 100)
                        assert await read_exactly(stream, (i + 1) * 100, 65536) == b"x" * (
                            (i + 1) * 100
                        )
                    await stream.close()
    sent = [r.getMessage() for r in caplog.records if "YAMUX TX" in r.getMessage()]
    assert sent, "the yamux log did not show the frames sent"
    updates = [m for m in sent if "type=WINDOW_UPDATE flags=0 " in m]
    assert updates == []


async def test_transfers_of_many_windows_flow_both_ways() -> None:
    size = 3 * 1024 * 1024 + 17  # twelve 256 KiB windows and a bit
    data = bytes(i % 251 for i in range(size))
    with trio.fail_after(60):
        async with pair({DIGEST: digest}) as (a, b):
            stream = await a.open_stream(b.peer_id, DIGEST)
            await stream.write(size.to_bytes(8, "big"))
            for i in range(0, size, 65536):
                await stream.write(data[i : i + 65536])
            assert await read_exactly(stream, 32, 32) == hashlib.sha256(data).digest()
            assert await read_exactly(stream, size, 777) == data
            assert await stream.read(1) == b""


async def test_a_protocol_the_peer_does_not_speak_fails_the_first_read() -> None:
    with trio.fail_after(30):
        async with pair({ECHO: echo}) as (a, b):
            stream = await a.open_stream(b.peer_id, "/test/unknown/1")
            await stream.write(b"hello")
            with pytest.raises(StreamClosedError, match="/test/unknown/1"):
                await stream.read(100)
            # the connection still serves the protocols the peer speaks
            stream = await a.open_stream(b.peer_id, ECHO)
            await stream.write(b"hi")
            assert await read_exactly(stream, 2, 10) == b"hi"


async def test_a_dialer_that_waits_for_each_answer_is_served() -> None:
    """py-libp2p's own client negotiates step by step (it waits for the header's echo before
    it proposes, and for the protocol's before it writes): the listener answers each at once."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    with trio.fail_after(30):
        async with pair({ECHO: echo}) as (a, b):
            raw = await a._host.new_stream(ID.from_base58(b.peer_id), [TProtocol(ECHO)])
            await raw.write(b"step by step")
            assert await raw.read(100) == b"step by step"
            await raw.close()


async def test_libp2p_own_protocols_get_what_came_with_the_proposal() -> None:
    """A lazy dialer's first bytes for one of libp2p's own protocols (ping: 32 bytes, echoed)
    reach its handler although they were read with the proposal."""
    with trio.fail_after(30):
        async with pair({ECHO: echo}) as (a, b):
            stream = await a.open_stream(b.peer_id, "/ipfs/ping/1.0.0")
            payload = bytes(range(32))
            await stream.write(payload)
            assert await read_exactly(stream, 32, 32) == payload
            await stream.reset()


async def test_a_lazy_exchange_is_one_data_frame_each_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dialer's SYN, proposal and first message are one frame; the listener's ACK,
    multistream answer (header and protocol echo) and first reply are one frame
    (py-libp2p sent three frames for the dialer's part and three for the listener's)."""
    import struct

    from libp2p.stream_muxer.yamux import yamux

    from node.p2p import yamux_frames

    # (peer the frame goes to, stream id, type, flags, body length), as written to the wire
    frames: list[tuple[str, int, int, int, int]] = []
    send = yamux_frames._send

    async def counted(conn: yamux.Yamux, data: bytes) -> None:
        _, typ, flags, sid, _ = struct.unpack(yamux.YAMUX_HEADER_FORMAT, data[:12])
        frames.append((str(conn.peer_id), sid, typ, flags, len(data) - 12))
        await send(conn, data)

    monkeypatch.setattr(yamux_frames, "_send", counted)
    with trio.fail_after(30):
        async with pair({ECHO: echo}) as (a, b):
            frames.clear()
            stream = await a.open_stream(b.peer_id, ECHO)
            await stream.write(b"ping")
            assert await read_exactly(stream, 4, 4) == b"ping"
            sid = stream._stream.muxed_stream.stream_id  # type: ignore[attr-defined]
            to_b = [f for f in frames if f[:2] == (b.peer_id, sid)]
            to_a = [f for f in frames if f[:2] == (a.peer_id, sid)]
            proposal = encode_delim(b"/multistream/1.0.0") + encode_delim(ECHO.encode())
            assert to_b == [(b.peer_id, sid, yamux.TYPE_DATA, yamux.FLAG_SYN, len(proposal) + 4)]
            assert to_a == [(a.peer_id, sid, yamux.TYPE_DATA, yamux.FLAG_ACK, len(proposal) + 4)]
            await stream.close()
