"""What peers may hold of this node at once, and what happens to a peer that keeps asking
for more: :class:`PeerGuard` (bookkeeping only: no I/O, no libp2p, the clock injected).

Bounded per peer and in total (docs/security.md "Floods"):

* **streams**: inbound streams open at once, counted from the moment yamux hands one over
  (before its protocol is negotiated) until its handler ends;
* **pending bytes**: bytes of frames received but not yet complete (a frame prefix
  announcing 4 MiB, then a trickle), counted as a handler reads them.

A stream over its peer's limit is refused and the peer gets a strike. Over the *total*, a
peer holding more than its fair share (the mean over the peers holding any) is refused with
a strike; a peer below it is not punished for the others: a stream is taken from the peer
holding the most (``evict``) and its own is admitted, so a crowd of hostile keys cannot
starve an honest peer of streams. Garbage frames are strikes too (reported by the handler's
stream). ``strikes_before_ban`` strikes within ``strike_window_s`` ban the peer for
``ban_s``: it is disconnected and refused at connection. The tables are bounded
(``max_tracked_peers``, oldest forgotten first), so a crowd of keys costs bounded memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from protocols.errors import PeerOverLimitError
from protocols.framing import FrameMeter

__all__ = ["Admission", "Ban", "GuardLimits", "PeerGuard", "StreamAccount"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class GuardLimits:
    """The limits of :class:`PeerGuard` (from the ``network`` section of the config)."""

    max_streams_per_peer: int = 128
    max_streams_total: int = 1024
    max_pending_bytes_per_peer: int = 8 * MiB
    max_pending_bytes_total: int = 64 * MiB
    strikes_before_ban: int = 10
    strike_window_s: float = 60.0
    ban_s: float = 300.0
    max_tracked_peers: int = 4096
    enabled: bool = True

    def __post_init__(self) -> None:
        for name in (
            "max_streams_per_peer",
            "max_streams_total",
            "max_pending_bytes_per_peer",
            "max_pending_bytes_total",
            "strikes_before_ban",
            "max_tracked_peers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.max_streams_total < self.max_streams_per_peer:
            raise ValueError("max_streams_total must be at least max_streams_per_peer")
        if self.max_pending_bytes_total < self.max_pending_bytes_per_peer:
            raise ValueError("max_pending_bytes_total must be at least max_pending_bytes_per_peer")


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to a new stream: admitted or not; ``evict``: a peer one of whose streams
    must be reset to make room (the total was reached by peers holding more)."""

    admitted: bool
    reason: str = ""
    evict: str | None = None


@dataclass(slots=True)
class Ban:
    until: float
    reason: str
    last_logged: float = -float("inf")
    refused: int = 0


@dataclass(slots=True)
class _Strikes:
    times: deque[float] = field(default_factory=deque)


class PeerGuard:
    """Counts streams and pending bytes per peer, gives strikes, bans.

    ``on_ban(peer, reason)`` is called once when a peer is banned (the host disconnects it
    and logs). With ``limits.enabled`` false nothing is refused and nobody is banned (the
    reference in ``scripts/bench/floods.py``); counts are still kept."""

    def __init__(
        self,
        limits: GuardLimits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_ban: Callable[[str, str], None] | None = None,
    ) -> None:
        self.limits = limits or GuardLimits()
        self._clock = clock
        self._on_ban = on_ban
        self._streams: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self.streams_total = 0
        self.pending_total = 0
        self._strikes: OrderedDict[str, _Strikes] = OrderedDict()
        self._bans: OrderedDict[str, Ban] = OrderedDict()
        self.bans_issued = 0
        self.refused_streams = 0

    # -- bans ----------------------------------------------------------------------------

    def ban_of(self, peer: str) -> Ban | None:
        """The ban in force on ``peer``, if any."""
        ban = self._bans.get(peer)
        if ban is None:
            return None
        if ban.until <= self._clock():
            del self._bans[peer]
            return None
        return ban

    def refusal_to_log(self, peer: str, every_s: float = 60.0) -> Ban | None:
        """For a refused connection of banned ``peer``: its ban, if this refusal should be
        logged (the first of the ban, then at most one per ``every_s``), else None."""
        ban = self.ban_of(peer)
        if ban is None:
            return None
        ban.refused += 1
        now = self._clock()
        if now - ban.last_logged < every_s:
            return None
        ban.last_logged = now
        return ban

    def strike(self, peer: str, reason: str) -> bool:
        """Record a strike against ``peer``; True if it is now banned (newly or already)."""
        if not self.limits.enabled:
            return False
        if self.ban_of(peer) is not None:
            return True
        now = self._clock()
        entry = self._strikes.pop(peer, None) or _Strikes()
        self._strikes[peer] = entry  # most recent last
        entry.times.append(now)
        while entry.times and entry.times[0] <= now - self.limits.strike_window_s:
            entry.times.popleft()
        while len(self._strikes) > self.limits.max_tracked_peers:
            self._strikes.popitem(last=False)
        if len(entry.times) < self.limits.strikes_before_ban:
            return False
        del self._strikes[peer]
        self._bans[peer] = Ban(until=now + self.limits.ban_s, reason=reason)
        while len(self._bans) > self.limits.max_tracked_peers:
            self._bans.popitem(last=False)
        self.bans_issued += 1
        if self._on_ban is not None:
            self._on_ban(peer, reason)
        return True

    # -- streams -------------------------------------------------------------------------

    def open_stream(self, peer: str) -> Admission:
        """A new inbound stream of ``peer``: admitted (and counted) or refused. A refusal
        that is the peer's doing has been struck already."""
        lim = self.limits
        if lim.enabled and self.ban_of(peer) is not None:
            self.refused_streams += 1
            return Admission(False, "the peer is banned")
        held = self._streams.get(peer, 0)
        evict: str | None = None
        if lim.enabled and held >= lim.max_streams_per_peer:
            self.refused_streams += 1
            reason = f"over {lim.max_streams_per_peer} streams open at once"
            self.strike(peer, reason)
            return Admission(False, reason)
        if lim.enabled and self.streams_total >= lim.max_streams_total:
            heaviest = max(self._streams, key=self._streams.__getitem__)
            if self._streams[heaviest] <= held + 1:  # the peer is among the heaviest
                self.refused_streams += 1
                reason = f"the node holds {lim.max_streams_total} streams of all peers"
                if held > self.streams_total / max(1, len(self._streams)):
                    self.strike(peer, f"{reason}, {held} of them this peer's")
                return Admission(False, reason)
            evict = heaviest
        self._streams[peer] = held + 1
        self.streams_total += 1
        return Admission(True, evict=evict)

    def close_stream(self, peer: str) -> None:
        held = self._streams.get(peer, 0)
        if held <= 1:
            self._streams.pop(peer, None)
        else:
            self._streams[peer] = held - 1
        if held:
            self.streams_total -= 1

    def streams_of(self, peer: str) -> int:
        return self._streams.get(peer, 0)

    # -- pending bytes -------------------------------------------------------------------

    def charge(self, peer: str, delta: int) -> str | None:
        """Change ``peer``'s pending bytes by ``delta``. An increase over a limit is not
        made: the reason is returned (and struck if the peer is over its share)."""
        held = self._pending.get(peer, 0)
        lim = self.limits
        if delta > 0 and lim.enabled:
            if held + delta > lim.max_pending_bytes_per_peer:
                reason = f"over {lim.max_pending_bytes_per_peer} bytes of unfinished frames at once"
                self.strike(peer, reason)
                return reason
            if self.pending_total + delta > lim.max_pending_bytes_total:
                reason = (
                    f"the node holds {lim.max_pending_bytes_total} bytes of unfinished "
                    "frames of all peers"
                )
                if held > self.pending_total / max(1, len(self._pending)):
                    self.strike(peer, reason)
                return reason
        delta = max(delta, -held)  # never give back more than was charged
        held += delta
        self.pending_total += delta
        if held:
            self._pending[peer] = held
        else:
            self._pending.pop(peer, None)
        return None

    def pending_of(self, peer: str) -> int:
        return self._pending.get(peer, 0)

    # -- bytes the muxer buffered, unread -------------------------------------------------

    def over_buffered(self, buffered: dict[str, int]) -> list[tuple[str, str]]:
        """Peers whose connections must be closed, with the reason, given the bytes their
        muxer buffered and nobody read yet (py-libp2p's yamux keeps what a peer sends beyond
        its receive window): those over ``max_pending_bytes_per_peer``, then the heaviest
        until all peers hold at most ``max_pending_bytes_total``. Each is struck."""
        lim = self.limits
        if not lim.enabled:
            return []
        cut: list[tuple[str, str]] = []
        total = sum(buffered.values())
        for peer, held in sorted(buffered.items(), key=lambda item: -item[1]):
            if held > lim.max_pending_bytes_per_peer:
                reason = f"{held} bytes sent and not read, over {lim.max_pending_bytes_per_peer}"
            elif total > lim.max_pending_bytes_total:
                reason = (
                    f"{held} bytes sent and not read while peers' unread bytes reached "
                    f"{lim.max_pending_bytes_total}"
                )
            else:
                break
            cut.append((peer, reason))
            total -= held
            self.strike(peer, reason)
        return cut


class StreamAccount:
    """One inbound stream's share of its peer's pending bytes, kept as its handler reads
    (:meth:`received`), given back when the handler ends (:meth:`close`); garbage that the
    handler's :class:`~protocols.stream.MessageStream` reports is a strike (:meth:`fault`)."""

    def __init__(self, guard: PeerGuard, peer: str) -> None:
        self._guard = guard
        self.peer = peer
        self._meter = FrameMeter()
        self._charged = 0

    def received(self, data: bytes) -> None:
        """Raises :class:`PeerOverLimitError` if the bytes of unfinished frames would go
        over the peer's or the node's limit."""
        pending = self._meter.feed(data)
        reason = self._guard.charge(self.peer, pending - self._charged)
        if reason is not None:
            raise PeerOverLimitError(f"{reason}; the stream is reset")
        self._charged = pending

    def fault(self, error: Exception) -> None:
        code = getattr(error, "code", type(error).__name__)
        self._guard.strike(self.peer, f"sent a bad frame ({code})")

    def close(self) -> None:
        self._guard.charge(self.peer, -self._charged)
        self._charged = 0
