"""Fewer trio checkpoints per message: py-libp2p's uncontended locks taken without one.

A message written on a py-libp2p 0.8.1 yamux stream passes four locks on its way to the socket:
the stream's read-write lock and its window lock (held only while the frame is built, with no
``await`` inside), the connection's frame lock (ours: :func:`node.p2p.yamux_frames._send`) and
the TCP stream's write lock. Taking a free ``trio.Lock`` or ``trio.Semaphore`` is a
checkpoint: the task yields to the scheduler and runs again in the next batch. With the
socket's own send that made five scheduler round trips per message, on top of the reader's;
a routed step writes two or three messages on each side.

:func:`use_lean_locks` replaces, once per process:

* ``YamuxStream.write``: a message that fits the send window in one frame, on a stream open
  for sending whose two locks are free, is framed and counted against the window without
  taking them (nothing else can run between the check and the use: there is no ``await``),
  then written as before; anything else (a large message, a full window, a lock held by
  another task) goes the original way;
* ``TrioTCPStream.write`` and ``.read``: a free lock is taken with ``acquire_nowait`` (the
  socket call that follows is a checkpoint anyway); a held one is waited for as before;
* ``Yamux.read_stream`` (a stream's read): while the connection's stream lock is free and the
  stream is open both ways and not reset, the buffered bytes are taken (or the stream's event
  is waited for, and then they are) without taking the lock, twice a read; any other state
  (closing, closed, reset, a connection shutting down, the lock held) goes the original way,
  which decides what the reader gets.

Reads are cheaper the same way: a message read took the stream lock before waiting and again
after, and the TCP read lock once per socket read.

Cancellation still reaches a writer at the socket's send, and a lock held by another task is
still waited for in order.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import trio
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.io.trio import TrioTCPStream
from libp2p.stream_muxer.yamux.yamux import (
    HEADER_SIZE,
    MAX_MESSAGE_SIZE,
    TYPE_DATA,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)

log = logging.getLogger(__name__)

_INSTALLED = "_hivemesh_lean_locks"
_HEADER = struct.Struct(YAMUX_HEADER_FORMAT)
_MAX_PAYLOAD = MAX_MESSAGE_SIZE - HEADER_SIZE
_original_stream_write: Any = None
_original_read_stream: Any = None


async def _stream_write(self: Any, data: bytes) -> None:
    """``YamuxStream.write``, without the checkpoints of its two locks when both are free."""
    n = len(data)
    if (
        0 < n <= _MAX_PAYLOAD
        and n <= self.send_window
        and not self.send_closed
        and not self.closed
        and self.rw_lock._writer_lock.value > 0
        and not self.window_lock.locked()
    ):
        self.send_window -= n
        await self.conn._write_frame(_HEADER.pack(0, TYPE_DATA, 0, self.stream_id, n) + data)
        return
    await _original_stream_write(self, data)


class held:
    """``async with held(lock)``: a free ``trio.Lock`` is taken without a checkpoint (the
    block's own I/O is one); a held one is waited for, in order, as ``async with lock``."""

    __slots__ = ("_lock",)

    def __init__(self, lock: trio.Lock) -> None:
        self._lock = lock

    async def __aenter__(self) -> None:
        if self._lock.locked():
            await self._lock.acquire()
        else:
            self._lock.acquire_nowait()

    async def __aexit__(self, *exc: object) -> None:
        self._lock.release()


def _tcp_error(error: trio.BrokenResourceError) -> ConnectionClosedError:
    return ConnectionClosedError(f"TCP connection reset by remote peer: {error}", transport="tcp")


async def _tcp_write(self: Any, data: bytes) -> None:
    """``TrioTCPStream.write``, taking a free write lock without a checkpoint."""
    async with held(self.write_lock):
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError as error:
            raise _tcp_error(error) from error
        except trio.ClosedResourceError:
            return  # closed here: py-libp2p's write returns quietly too


async def _tcp_read(self: Any, n: int | None = None) -> bytes:
    """``TrioTCPStream.read``, taking a free read lock without a checkpoint."""
    if n == 0:
        return b""
    async with held(self.read_lock):
        try:
            return await self.stream.receive_some(n)
        except trio.BrokenResourceError as error:
            raise _tcp_error(error) from error
        except trio.ClosedResourceError:
            return b""  # closed here: EOF, as py-libp2p's read says


async def _read_stream(self: Any, stream_id: int, n: int | None = -1) -> bytes:
    """``Yamux.read_stream`` for an open stream, without the connection's stream lock."""
    if n is None:
        n = -1
    while not self.streams_lock.locked():
        stream = self.streams.get(stream_id)
        buffer = self.stream_buffers.get(stream_id)
        if (
            stream is None
            or buffer is None
            or self.event_shutting_down.is_set()
            or stream.reset_received
            or stream.recv_closed
            or stream.closed
        ):
            break  # the original decides: EOF, reset, the last bytes of a closed stream
        if buffer:
            if n == -1 or n >= len(buffer):
                data = bytes(buffer)
                buffer.clear()
            else:
                data = bytes(buffer[:n])
                del buffer[:n]
            return data
        event = self.stream_events.get(stream_id)
        if event is None:
            break
        await event.wait()
        if self.stream_events.get(stream_id) is event:
            self.stream_events[stream_id] = trio.Event()
    return await _original_read_stream(self, stream_id, n)


def use_lean_locks() -> bool:
    """Install the writes and reads above, once per process. Returns whether they are in
    place (not if this py-libp2p lacks the parts they rely on)."""
    global _original_stream_write, _original_read_stream
    if getattr(YamuxStream, _INSTALLED, False):
        return True
    stream_names = set(YamuxStream.__init__.__code__.co_names)
    conn_names = set(Yamux.__init__.__code__.co_names)
    if (
        not {"rw_lock", "window_lock", "send_window", "recv_closed"} <= stream_names
        or not {"streams_lock", "stream_buffers", "stream_events"} <= conn_names
        or not {"stream", "read_lock", "write_lock"}
        <= set(TrioTCPStream.__init__.__code__.co_names)
        or not callable(getattr(Yamux, "read_stream", None))
    ):
        log.debug("py-libp2p's yamux stream is not the one known: its locks stay as they are")
        return False
    _original_stream_write = YamuxStream.write
    _original_read_stream = Yamux.read_stream
    YamuxStream.write = _stream_write  # type: ignore[method-assign]
    TrioTCPStream.write = _tcp_write  # type: ignore[method-assign]
    TrioTCPStream.read = _tcp_read  # type: ignore[method-assign]
    Yamux.read_stream = _read_stream  # type: ignore[method-assign]
    setattr(YamuxStream, _INSTALLED, True)
    return True
