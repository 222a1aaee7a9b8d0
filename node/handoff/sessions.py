"""Handoff streams kept open between exchanges, and the version each peer speaks.

Since handoff 1.2.0 a stream carries one exchange after another (docs/protocols.md §9.1): a
delegator that finished an exchange keeps the stream and sends its next offer to that peer on
it. Opening a stream costs more than the exchange itself on py-libp2p (yamux SYN/ACK and FIN,
multistream-select, a handler task, the stream's accounting), so a chain of routed steps
reuses a few warm streams instead of opening one per step.

:class:`HandoffStreams` is the delegator's pool: idle streams per peer, most recently used
first, closed after :data:`IDLE_S` (well before a delegatee's idle limit) or when there are
more than ``max_idle_per_peer``. It also remembers the peers that refused the newest
protocol id and which older one they took, for :data:`RELEARN_S`.

A pooled stream may have been closed by the peer meanwhile (its idle limit, a restart): the
delegator then sees the stream end before any answer and offers again on a new stream, which
is safe because offers are idempotent by handoff id (§9.6).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from protocols import handoff
from protocols.handoff.messages import HandoffMessage
from protocols.stream import MessageStream
from protocols.versioning import parse_version, version_of

log = logging.getLogger(__name__)

IDLE_S = 10.0
"""How long the delegator keeps an idle stream (a delegatee closes one idle for
``handoff.session_idle_s``, at least 30 s by default: the delegator lets go first)."""
MAX_IDLE_PER_PEER = 16
RELEARN_S = 600.0
"""How long a peer that refused the newest handoff version is offered an older one before
the newest is tried again (it may have been upgraded)."""

PROTOCOL_IDS = (handoff.PROTOCOL_ID, *handoff.LEGACY_PROTOCOL_IDS)


def carries_sessions(protocol_id: str) -> bool:
    """Whether streams of this handoff version carry one exchange after another (1.2.0+)."""
    return parse_version(version_of(protocol_id)) >= handoff.SESSION_VERSION


class HandoffStreams:
    """The delegator's idle handoff streams and the handoff version of each peer."""

    def __init__(
        self,
        *,
        idle_s: float = IDLE_S,
        max_idle_per_peer: int = MAX_IDLE_PER_PEER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_s = idle_s
        self.max_idle_per_peer = max_idle_per_peer
        self._clock = clock
        self._idle: dict[str, list[tuple[float, MessageStream[HandoffMessage]]]] = {}
        self._older: dict[str, tuple[int, float]] = {}  # peer -> (index in PROTOCOL_IDS, when)
        self._closing: list[MessageStream[HandoffMessage]] = []
        self._wake = trio.Event()
        self.reused = 0  # exchanges that began on a kept stream
        self.opened = 0  # streams opened for an exchange

    # -- versions -----------------------------------------------------------------------

    def protocol_for(self, peer: str) -> str:
        """The handoff protocol id to propose to ``peer``: the newest, unless it refused it."""
        older = self._older.get(peer)
        if older is None:
            return PROTOCOL_IDS[0]
        index, since = older
        if self._clock() - since > RELEARN_S:
            del self._older[peer]
            return PROTOCOL_IDS[0]
        return PROTOCOL_IDS[index]

    def refused(self, peer: str, protocol_id: str) -> str | None:
        """``peer`` refused ``protocol_id``: the next older id to propose, or None."""
        index = PROTOCOL_IDS.index(protocol_id) + 1
        if index >= len(PROTOCOL_IDS):
            self._older.pop(peer, None)
            return None
        self._older[peer] = (index, self._clock())
        return PROTOCOL_IDS[index]

    # -- idle streams -------------------------------------------------------------------

    def take(self, peer: str) -> MessageStream[HandoffMessage] | None:
        """The most recently used idle stream to ``peer`` that is not too old, if any."""
        idle = self._idle.get(peer)
        now = self._clock()
        while idle:
            since, ms = idle.pop()
            if now - since < self.idle_s:
                if not idle:
                    del self._idle[peer]
                self.reused += 1
                return ms
            self._close_later(ms)
        self._idle.pop(peer, None)
        return None

    def give(self, peer: str, ms: MessageStream[HandoffMessage]) -> None:
        """An exchange on ``ms`` ended cleanly: keep the stream for the next one."""
        idle = self._idle.setdefault(peer, [])
        idle.append((self._clock(), ms))
        while len(idle) > self.max_idle_per_peer:
            self._close_later(idle.pop(0)[1])

    def forget(self, peer: str) -> None:
        """``peer`` is gone (disconnected): its idle streams go too."""
        for _, ms in self._idle.pop(peer, []):
            self._close_later(ms)

    def idle(self, peer: str | None = None) -> int:
        if peer is not None:
            return len(self._idle.get(peer, ()))
        return sum(len(v) for v in self._idle.values())

    def _close_later(self, ms: MessageStream[HandoffMessage]) -> None:
        self._closing.append(ms)
        self._wake.set()

    async def run(self) -> None:
        """Closes the streams let go of, and the ones idle too long (runs in the node)."""
        while True:
            with trio.move_on_after(self.idle_s / 2):
                await self._wake.wait()
            self._wake = trio.Event()
            now = self._clock()
            for peer in list(self._idle):
                idle = self._idle[peer]
                while idle and now - idle[0][0] >= self.idle_s:
                    self._closing.append(idle.pop(0)[1])
                if not idle:
                    del self._idle[peer]
            closing, self._closing = self._closing, []
            for ms in closing:
                with trio.move_on_after(1.0):
                    await ms.close()

    async def aclose(self) -> None:
        for peer in list(self._idle):
            self.forget(peer)
        closing, self._closing = self._closing, []
        with trio.move_on_after(1.0):
            for ms in closing:
                await ms.close()
