"""In-memory byte streams for MessageStream tests (the ByteStream protocol, no network)."""

from __future__ import annotations

import trio

from protocols.errors import StreamClosedError


class MemoryStream:
    """A ByteStream over a fixed inbound buffer, delivered ``chunk`` bytes per read."""

    def __init__(self, inbound: bytes = b"", *, chunk: int = 1 << 20) -> None:
        self.inbound = bytearray(inbound)
        self.chunk = chunk
        self.written = bytearray()
        self.closed = False
        self.was_reset = False

    async def read(self, n: int) -> bytes:
        if self.was_reset:
            raise StreamClosedError("stream was reset")
        size = min(n, self.chunk)
        data = bytes(self.inbound[:size])
        del self.inbound[:size]
        return data

    async def write(self, data: bytes) -> None:
        if self.closed or self.was_reset:
            raise StreamClosedError("stream is closed")
        self.written += data

    async def close(self) -> None:
        self.closed = True

    async def reset(self) -> None:
        self.was_reset = True


class SilentStream(MemoryStream):
    """A peer that never sends anything (and never closes)."""

    async def read(self, n: int) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")
