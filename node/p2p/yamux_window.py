"""yamux receive-window updates as go-yamux sends them, for py-libp2p 0.8.1's yamux.

py-libp2p 0.8.1 sends a WINDOW_UPDATE frame after almost every read of a stream (its
"partial slack" branch: any read that leaves the window short of its target, however little).
A handoff reads a few small messages on each side, so half of the frames a routed step sent
were window updates (10 of 20, counted over a 50-step chain), each one encrypted, written and
read back like any other frame. go-yamux (and the yamux spec's reference) sends an update only
once the bytes read since the last one reach half the window: the sender, whose window is
then still at least half full, never waits for it; a stream that moves less than half a
window (128 KiB by default) sends none.

:func:`use_go_yamux_window_updates` replaces the method that decides, on py-libp2p's stream
class, with that rule; the bookkeeping (target, growth, auto-tuning) stays py-libp2p's own.
It is applied once per process by :class:`node.p2p.host.P2PHost` and changes nothing if this
py-libp2p's yamux does not have the parts it relies on.
"""

from __future__ import annotations

import logging
from typing import Any

from libp2p.stream_muxer.yamux.yamux import YamuxStream

log = logging.getLogger(__name__)

# the methods of py-libp2p's stream class the rule relies on (it also reads the stream's
# window_lock, target_recv_window, recv_window and _pending_recv_release)
_METHODS = ("_grow_threshold", "_grow_to_delta", "_apply_autotune_epoch", "send_window_update")


async def _send_window_update_when_half_read(self: Any, *, bytes_read: int = 0) -> None:
    """go-yamux's ``sendWindowUpdate``: grow the window back to its target once what was
    read since the last update (the target minus the window and what is still buffered) is
    at least half of it; otherwise send nothing."""
    increment = 0
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        read_since = self.target_recv_window - (self.recv_window + buffered)
        if read_since <= 0 or read_since < self._grow_threshold():
            return
        increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
        self._pending_recv_release = 0
    if increment > 0:
        await self.send_window_update(increment, skip_lock=True)


def use_go_yamux_window_updates() -> bool:
    """Make py-libp2p's yamux streams send window updates as go-yamux does (idempotent).
    Returns whether the rule is in place."""
    current = YamuxStream._auto_tune_and_send_window_update
    if current is _send_window_update_when_half_read:
        return True
    missing = [m for m in _METHODS if not callable(getattr(YamuxStream, m, None))]
    if missing:
        log.debug("py-libp2p's yamux lacks %s: its window updates are left as they are", missing)
        return False
    YamuxStream._auto_tune_and_send_window_update = _send_window_update_when_half_read  # type: ignore[method-assign]
    return True
