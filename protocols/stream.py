"""Reading and writing framed messages over a byte stream (any transport).

The node's libp2p adapter provides a :class:`ByteStream`; tests can use an in-memory one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, Protocol, runtime_checkable

import trio

from protocols._logsafe import logsafe
from protocols.errors import (
    FrameDecodeError,
    FrameTooLargeError,
    MessageValidationError,
    PeerErrorResponse,
    ProtocolTimeoutError,
    StreamClosedError,
    UnknownMessageTypeError,
)
from protocols.framing import FrameDecoder, encode_frame, resolve_limits
from protocols.limits import FrameLimits
from protocols.versioning import dump_for
from protocols.wire import ErrorMessage, M, MessageCodec

READ_CHUNK = 64 * 1024


class ByteStream(Protocol):
    """What the protocols need from a transport stream."""

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` at a clean end; StreamClosedError if reset."""
        ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


@runtime_checkable
class ReportsPeerFaults(Protocol):
    """A :class:`ByteStream` that wants to hear of the garbage its peer sent (a node counts
    it against the peer, see node/p2p/guard.py)."""

    def peer_fault(self, error: Exception) -> None: ...


# what a peer sent that no honest implementation sends (timeouts and closes are not here)
PEER_FAULTS = (
    FrameDecodeError,
    FrameTooLargeError,
    UnknownMessageTypeError,
    MessageValidationError,
)


class MessageStream(Generic[M]):
    """A stream of typed messages of one protocol.

    ``receive`` raises :class:`StreamClosedError` when the stream ends before a frame,
    :class:`RemoteProtocolError` subclasses for garbage (a frame breaking ``limits`` is a
    :class:`~protocols.errors.FrameLimitError`, raised before its JSON is parsed), and
    :class:`PeerErrorResponse` when ``raise_errors`` is set and the peer sent an ``error``.

    ``limits`` bounds what is received (default
    :data:`~protocols.limits.DEFAULT_LIMITS`); ``max_frame_size``, if given, replaces its
    frame size, which also caps what is sent. ``version``: the (older) version of the
    protocol the stream speaks, if not the newest.
    """

    def __init__(
        self,
        stream: ByteStream,
        codec: MessageCodec[M],
        *,
        max_frame_size: int | None = None,
        limits: FrameLimits | None = None,
        version: str | None = None,
    ) -> None:
        self.stream = stream
        # an older version of the protocol than the codec's: messages are sent with only the
        # members it defines (protocols.versioning.dump_for)
        self.version = version
        self.codec = codec
        self.limits = resolve_limits(max_frame_size, limits)
        self.max_frame_size = self.limits.max_frame_size
        self._decoder = FrameDecoder(limits=self.limits)
        self._pending: list[dict[str, object]] = []
        self._eof = False

    async def send(self, message: M | ErrorMessage) -> None:
        await self.send_many((message,))

    async def send_many(self, messages: Sequence[M | ErrorMessage]) -> None:
        """Send ``messages`` in order, in one write."""
        frames = []
        for message in messages:
            if self.version is None:
                obj = message.model_dump(mode="json")
            else:
                obj = dump_for(message, self.version)
            frames.append(encode_frame(obj, self.max_frame_size))
        await self.stream.write(b"".join(frames))

    async def send_error(self, code: str, message: str) -> None:
        await self.send(ErrorMessage(code=code, message=message))

    async def receive_or_eof(self) -> M | ErrorMessage | None:
        try:
            return await self._receive_or_eof()
        except PEER_FAULTS as exc:
            # a frame cut short by the end of the stream is what a peer dying looks like
            # on yamux: not reported as garbage
            if not self._eof and isinstance(self.stream, ReportsPeerFaults):
                self.stream.peer_fault(exc)
            raise

    async def _receive_or_eof(self) -> M | ErrorMessage | None:
        while not self._pending:
            if self._eof:
                return None
            data = await self.stream.read(READ_CHUNK)
            if not data:
                self._eof = True
                self._decoder.check_eof()
                return None
            self._pending.extend(self._decoder.feed(data))
        obj = self._pending.pop(0)
        if obj.get("type") == "error":
            return ErrorMessage.model_validate(obj) if _valid_error(obj) else _bad_error(obj)
        return self.codec.decode(obj)

    async def receive(self, *, raise_errors: bool = True) -> M | ErrorMessage:
        msg = await self.receive_or_eof()
        if msg is None:
            raise StreamClosedError(f"{self.codec.protocol} stream closed before the peer's answer")
        if raise_errors and isinstance(msg, ErrorMessage):
            raise PeerErrorResponse(msg.code, msg.message)
        return msg

    async def receive_within(
        self, seconds: float, *, raise_errors: bool = True
    ) -> M | ErrorMessage:
        with trio.move_on_after(seconds) as scope:
            return await self.receive(raise_errors=raise_errors)
        assert scope.cancelled_caught
        raise ProtocolTimeoutError(
            f"no {self.codec.protocol} message within {seconds:g}s: outcome unknown"
        )

    async def close(self) -> None:
        await self.stream.close()

    async def reset(self) -> None:
        await self.stream.reset()


def _valid_error(obj: dict[str, object]) -> bool:
    return (
        isinstance(obj.get("code"), str) and isinstance(obj.get("message"), str) and len(obj) == 3
    )


def _bad_error(obj: dict[str, object]) -> ErrorMessage:
    return ErrorMessage(
        code="invalid_message", message=f"malformed error message: {logsafe(repr(obj), 200)}"
    )
