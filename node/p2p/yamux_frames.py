"""Fewer yamux frames per stream: SYN and ACK ride on the stream's first frame.

py-libp2p 0.8.1's yamux opens a stream with a frame of its own (a window update with SYN)
and answers a new inbound stream with another (a window update with ACK). The yamux spec lets
both flags ride on the stream's next frame ("may be sent with a data or window update
message"), as py-libp2p's own reader accepts (a SYN or an ACK on a data frame, with its
payload). A handoff opens a stream per step, and these were two of its ten frames, each one
encrypted, written and read back like any other.

:func:`use_deferred_syn_ack` replaces py-libp2p's ``Yamux._write_frame`` (once per process):

* a lone SYN (a stream being opened) is held and set on the stream's next frame — its data
  (every libp2p stream begins with the dialer's multistream-select header, written at once),
  or its FIN or RST;
* a lone ACK (py-libp2p's reader accepting an inbound stream) is held and set on the first
  frame this side writes on the stream: the multistream answer, a reset, or its close;
* every other frame is written as before, without py-libp2p's per-frame debug formatting
  and its extra checkpoint.

A held flag belongs to its connection and goes with it; a stream's first frame always comes
(every hivemesh stream is written on, closed or reset by its owner).
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from libp2p.stream_muxer.yamux.yamux import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    HEADER_SIZE,
    TYPE_DATA,
    TYPE_WINDOW_UPDATE,
    Yamux,
)

from node.p2p.lean_locks import held

log = logging.getLogger(__name__)
_libp2p_log = logging.getLogger("libp2p.stream_muxer.yamux.yamux")  # where py-libp2p logs frames

_HEADER = struct.Struct("!BBHII")  # version, type, flags, stream id, length
_HELD = "_hivemesh_held_flags"  # on a Yamux connection: {stream id: flags to add}
_INSTALLED = "_hivemesh_deferred_syn_ack"  # on the Yamux class, once installed
_TYPE_NAMES = {0: "DATA", 1: "WINDOW_UPDATE", 2: "PING", 3: "GO_AWAY"}
_FLAG_NAMES = ((FLAG_SYN, "SYN"), (FLAG_ACK, "ACK"), (FLAG_FIN, "FIN"), (FLAG_RST, "RST"))


async def _write_frame(self: Any, data: bytes) -> None:
    """``Yamux._write_frame``: holds a lone SYN or ACK, adds held flags to the stream's next
    frame, then writes as py-libp2p does (one writer at a time)."""
    if len(data) >= HEADER_SIZE:
        version, typ, flags, sid, length = _HEADER.unpack_from(data)
        if sid and typ in (TYPE_DATA, TYPE_WINDOW_UPDATE):
            held: dict[int, int] = self.__dict__.setdefault(_HELD, {})
            lone = typ == TYPE_WINDOW_UPDATE and length == 0 and len(data) == HEADER_SIZE
            if lone and flags in (FLAG_SYN, FLAG_ACK):
                held[sid] = held.get(sid, 0) | flags
                return
            extra = held.pop(sid, 0) if held else 0
            if extra:
                data = _HEADER.pack(version, typ, flags | extra, sid, length) + data[HEADER_SIZE:]
    await _send(self, data)


async def _send(conn: Any, data: bytes) -> None:
    """Write one frame on yamux connection ``conn``, as py-libp2p does (one writer at a
    time)."""
    if _libp2p_log.isEnabledFor(logging.DEBUG):  # (py-libp2p formats it for every frame)
        _libp2p_log.debug("YAMUX TX: %s", _describe(data))
    # (py-libp2p checkpoints again after each frame: the socket's send already does; and a
    # free lock is taken without one)
    async with held(conn._write_lock):
        await conn.secured_conn.write(data)


def frame_names(data: bytes) -> tuple[str, str]:
    """A frame's type and flags by name, as py-libp2p's yamux logs them: ``("DATA",
    "SYN+ACK")``; no flag is ``"0"``."""
    _, typ, flags, _, _ = _HEADER.unpack_from(data)
    names = [name for bit, name in _FLAG_NAMES if flags & bit]
    return _TYPE_NAMES.get(typ, str(typ)), "+".join(names) or "0"


def _describe(data: bytes) -> str:
    """A frame as py-libp2p's yamux logs it."""
    kind, flags = frame_names(data)
    _, _, _, sid, length = _HEADER.unpack_from(data)
    return (
        f"type={kind} flags={flags} stream={sid} length={length} "
        f"payload_bytes={len(data) - HEADER_SIZE}"
    )


def use_deferred_syn_ack() -> bool:
    """Install :func:`_write_frame` on py-libp2p's yamux, once per process (a later wrapper
    of it stays). Returns whether it is in place (not if this py-libp2p's yamux lacks the
    parts it relies on)."""
    if getattr(Yamux, _INSTALLED, False):
        return True
    if not callable(getattr(Yamux, "_write_frame", None)):
        log.debug("py-libp2p's yamux has no _write_frame: SYN and ACK frames stay as they are")
        return False
    Yamux._write_frame = _write_frame  # type: ignore[method-assign]
    setattr(Yamux, _INSTALLED, True)
    return True
