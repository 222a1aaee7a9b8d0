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

A stream may be kept with its ``ack`` still owed (the result is recorded, the ack not yet
sent): the next offer on it carries the ack in the same write, and the pool sends an ack
nobody took along alone after :data:`ACK_DEFER_S`. A routed chain thus sends two messages a
step instead of three (the delegatee waits ``ack_wait_s``, 5 s by default, for an ack).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from protocols import handoff
from protocols.errors import ProtocolError
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

ACK_DEFER_S = 0.02
"""How long an owed ``ack`` waits for the next offer on its stream before it is sent alone."""

PROTOCOL_IDS = (handoff.PROTOCOL_ID, *handoff.LEGACY_PROTOCOL_IDS)

Stream = MessageStream[HandoffMessage]


def older_than(protocol_id: str) -> str | None:
    """The handoff protocol id to propose after ``protocol_id`` was refused, if any."""
    index = PROTOCOL_IDS.index(protocol_id) + 1
    return PROTOCOL_IDS[index] if index < len(PROTOCOL_IDS) else None


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
        # per peer, oldest first: (kept since, stream, the ack it owes or None)
        self._idle: dict[str, list[tuple[float, Stream, handoff.Ack | None]]] = {}
        self._older: dict[str, tuple[str, float]] = {}  # peer -> (the id it took, when)
        self._closing: list[tuple[Stream, handoff.Ack | None]] = []
        self._owed = 0  # kept streams that owe an ack
        self._sleeping_long = False  # the sweeper waits without looking at owed acks
        self._wake = trio.Event()
        self.reused = 0  # exchanges that began on a kept stream
        self.opened = 0  # streams opened for an exchange
        self.acks_alone = 0  # owed acks sent on their own (no offer came in time)

    # -- versions -----------------------------------------------------------------------

    def protocol_for(self, peer: str) -> str:
        """The handoff protocol id to propose to ``peer``: the newest, unless it refused it."""
        older = self._older.get(peer)
        if older is None:
            return PROTOCOL_IDS[0]
        protocol_id, since = older
        if self._clock() - since > RELEARN_S:
            del self._older[peer]
            return PROTOCOL_IDS[0]
        return protocol_id

    def refused(self, peer: str, protocol_id: str) -> str | None:
        """``peer`` refused ``protocol_id``: the next older id to propose, or None."""
        older = older_than(protocol_id)
        if older is None:
            self._older.pop(peer, None)
            return None
        self._older[peer] = (older, self._clock())
        return older

    # -- idle streams -------------------------------------------------------------------

    def take(self, peer: str) -> tuple[Stream, handoff.Ack | None] | None:
        """The most recently used idle stream to ``peer`` that is not too old, with the ack
        it owes (to be sent before, or with, the next message), if any."""
        idle = self._idle.get(peer)
        now = self._clock()
        while idle:
            since, ms, owed = idle.pop()
            self._owed -= owed is not None
            if now - since < self.idle_s:
                if not idle:
                    del self._idle[peer]
                self.reused += 1
                return ms, owed
            self._close_later(ms, owed)
        self._idle.pop(peer, None)
        return None

    def give(self, peer: str, ms: Stream, owed: handoff.Ack | None = None) -> None:
        """An exchange on ``ms`` ended cleanly (but for ``owed``, its ack not sent yet): keep
        the stream for the next one."""
        idle = self._idle.setdefault(peer, [])
        idle.append((self._clock(), ms, owed))
        if owed is not None:
            self._owed += 1
            if self._sleeping_long:
                self._wake.set()  # the sweeper looks more often while acks are owed
        while len(idle) > self.max_idle_per_peer:
            _, old, old_owed = idle.pop(0)
            self._owed -= old_owed is not None
            self._close_later(old, old_owed)

    def forget(self, peer: str) -> None:
        """``peer`` is gone (disconnected): its idle streams go too."""
        for _, ms, owed in self._idle.pop(peer, []):
            self._owed -= owed is not None
            self._close_later(ms, None)  # (nobody to send an ack to)

    def idle(self, peer: str | None = None) -> int:
        if peer is not None:
            return len(self._idle.get(peer, ()))
        return sum(len(v) for v in self._idle.values())

    def owed(self) -> int:
        return self._owed

    def _close_later(self, ms: Stream, owed: handoff.Ack | None) -> None:
        self._closing.append((ms, owed))
        self._wake.set()

    async def run(self) -> None:
        """Sends the acks no offer took along, closes the streams let go of and the ones
        idle too long (runs in the node)."""
        while True:
            # (while acks are owed it looks every ACK_DEFER_S and needs no wake-up for more)
            self._sleeping_long = not self._owed
            with trio.move_on_after(self.idle_s / 2 if self._sleeping_long else ACK_DEFER_S):
                await self._wake.wait()
            self._sleeping_long = False
            self._wake = trio.Event()
            try:
                await self._sweep()
            except Exception:  # a kept stream's trouble must not stop the node
                log.exception("handoff stream sweep failed")

    async def _sweep(self) -> None:
        now = self._clock()
        due: list[tuple[str, Stream, handoff.Ack]] = []
        for peer in list(self._idle):
            idle = self._idle[peer]
            while idle and now - idle[0][0] >= self.idle_s:
                _, ms, owed = idle.pop(0)
                self._owed -= owed is not None
                self._closing.append((ms, owed))
            if self._owed:
                keep = []
                for since, ms, owed in idle:
                    if owed is not None and now - since >= ACK_DEFER_S:
                        self._owed -= 1
                        due.append((peer, ms, owed))
                    else:
                        keep.append((since, ms, owed))
                idle[:] = keep
            if not idle:
                del self._idle[peer]
        for peer, ms, ack in due:  # (out of the pool while we write on them)
            if await _send_ack(ms, ack):
                self.acks_alone += 1
                self.give(peer, ms)
        closing, self._closing = self._closing, []
        for ms, owed in closing:
            if owed is None or await _send_ack(ms, owed):
                with trio.move_on_after(1.0):
                    await ms.close()

    async def aclose(self) -> None:
        """Send the acks owed, close every kept stream (the node stops)."""
        for peer in list(self._idle):
            for _, ms, owed in self._idle.pop(peer):
                self._closing.append((ms, owed))
        self._owed = 0
        closing, self._closing = self._closing, []
        with trio.move_on_after(1.0):
            for ms, owed in closing:
                if owed is None or await _send_ack(ms, owed):
                    await ms.close()


async def _send_ack(ms: Stream, ack: handoff.Ack) -> bool:
    """Send an owed ack alone; False (the stream reset) if the stream broke."""
    try:
        with trio.move_on_after(1.0) as scope:
            await ms.send(ack)
        if not scope.cancelled_caught:
            return True
    except ProtocolError as exc:
        log.debug("ack of handoff %s not sent: %s", ack.handoff_id, exc)
    await ms.reset()
    return False
