"""What this node knows about its peers: addresses, cards, connection state, and evidence.

Pure bookkeeping (no I/O); the clock is injected. Three kinds of knowledge, trusted
differently:

- **Cards** are accepted only first-hand, from the authenticated peer they describe. What a
  card says about load and capacity is a claim; placement caps it by evidence.
- **Addresses** are believed only when the peer itself gave them: in its own card, in an
  address record it signed (relayed by others verbatim, newest ``seq`` wins), or by the
  operator (bootstrap). Peers heard of from a third party (*hearsay*) are remembered at most
  ``max_per_source`` per source, and are the first to go when the table is full. A failed
  dial backs the *address* off (exponentially, capped), whichever peer id it was dialled for.
  A *member* — a peer that sent its card itself, or one remembered from an earlier run (the
  peer store, :mod:`node.peerstore`) — that is lost is redialled for ``redial_for_s`` after
  it was last seen, with a shorter cap on the backoff, before it is forgotten.
- **Evidence** is what this node measured itself of a peer running its steps: steps done and
  failed, run times, steps outstanding, the most it completed at once. Peers that broke the
  protocol or returned invalid results are *excluded* from placement for a while.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from node.addr_record import AddrRecord, transport_part
from protocols.discovery import NodeCard, PeerRef, ToolCard
from workflows.tools import version_matches

MAX_ADDRS_PER_PEER = 16
MAX_TOOLS_TIMED = 64  # per peer: tools whose run time we keep
RUN_TIME_WEIGHT = 0.3  # of a new observation in the moving average


class CardMismatchError(ValueError):
    """A peer sent a card describing another node."""


class Learned(Enum):
    """What :meth:`PeerRegistry.learn_record` did with a relayed address record."""

    NEW = "new"  # a peer we did not know: worth a dial
    UPDATED = "updated"  # a newer record for a known peer
    KNOWN = "known"  # nothing new (same or older record)
    REFUSED = "refused"  # over the source's quota, or the table is full


@dataclass(frozen=True)
class Exclusion:
    """A peer excluded from placement until ``until`` (the registry's clock)."""

    reason: str
    since: float
    until: float


@dataclass
class AddrBackoff:
    failures: int = 0
    retry_at: float = 0.0


@dataclass
class PeerState:
    peer_id: str
    card: NodeCard | None = None
    card_expires_at: float = 0.0
    connected: bool = False
    last_seen: float | None = None
    # addresses, by who vouches for them (see the module docstring)
    static_addrs: list[str] = field(default_factory=list)
    remembered_addrs: list[str] = field(default_factory=list)  # from the peer store
    record: AddrRecord | None = None
    learned_from: str | None = None  # the peer that told us of it, while it is hearsay
    learned_at: float = 0.0
    last_dial_at: float | None = None
    failed_dials: int = 0
    redial_until: float = 0.0  # a remembered peer is dialled at least until then
    # evidence: what this node measured of the peer running its steps
    done: int = 0
    failed: int = 0
    failures: int = 0  # consecutive, since the last success
    last_failure_at: float | None = None
    rtt_ms: float | None = None
    outstanding: int = 0
    sustained: int = 0  # the most of our steps it had at once when one of them succeeded
    run_ms: dict[str, float] = field(default_factory=dict)  # per tool, moving average

    @property
    def addrs(self) -> list[str]:
        """Addresses to dial: the card's, then the signed record's, then the operator's,
        then those remembered from an earlier run."""
        out: list[str] = []
        card_addrs = self.card.addrs if self.card is not None else []
        record_addrs = self.record.dial_addrs() if self.record is not None else []
        for addr in (*card_addrs, *record_addrs, *self.static_addrs, *self.remembered_addrs):
            if addr not in out:
                out.append(addr)
        return out[:MAX_ADDRS_PER_PEER]

    @property
    def hearsay(self) -> bool:
        return self.learned_from is not None

    def tool(self, name: str, version: str | None, now: float) -> ToolCard | None:
        if self.card is None or now >= self.card_expires_at:
            return None
        for t in self.card.tools:
            if t.name == name and version_matches(t.version, version):
                return t
        return None

    def mean_run_ms(self) -> float | None:
        """Mean of the per-tool run times (for display)."""
        if not self.run_ms:
            return None
        return sum(self.run_ms.values()) / len(self.run_ms)


class PeerRegistry:
    FAILURE_MEMORY_S = 60.0
    FORGET_AFTER_FAILED_DIALS = 5
    MAX_EXCLUSIONS = 1024

    def __init__(
        self,
        self_id: str,
        *,
        max_peers: int = 256,
        max_per_source: int = 16,
        backoff_s: float = 5.0,
        backoff_max_s: float = 300.0,
        redial_for_s: float = 0.0,
        redial_backoff_max_s: float | None = None,
        exclude_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.self_id = self_id
        self.max_peers = max_peers
        self.max_per_source = max_per_source
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        # a member (a peer that said hello itself, or one remembered from an earlier run)
        # that is lost is redialled for this long, its addresses waiting at most
        # redial_backoff_max_s between dials
        self.redial_for_s = redial_for_s
        self.redial_backoff_max_s = (
            backoff_max_s if redial_backoff_max_s is None else redial_backoff_max_s
        )
        self.exclude_s = exclude_s
        self._clock = clock
        self._peers: dict[str, PeerState] = {}
        self._hearsay_from: dict[str, int] = {}  # source peer → hearsay entries it taught us
        self._backoff: dict[str, AddrBackoff] = {}  # transport address → its backoff
        self._dialling: set[str] = set()  # transport addresses being dialled now
        self._excluded: dict[str, Exclusion] = {}  # kept apart: a forgotten peer stays out

    def __len__(self) -> int:
        return len(self._peers)

    def now(self) -> float:
        return self._clock()

    def get(self, peer_id: str) -> PeerState | None:
        return self._peers.get(peer_id)

    def all(self) -> list[PeerState]:
        return sorted(self._peers.values(), key=lambda p: p.peer_id)

    # -- the table -----------------------------------------------------------------------

    def _state(self, peer_id: str, *, source: str | None = None) -> PeerState | None:
        """The peer's entry, created if there is room. ``source``: a new entry is hearsay
        from that peer (bounded per source, and never evicts anything)."""
        if peer_id == self.self_id:
            return None
        state = self._peers.get(peer_id)
        if state is not None:
            return state
        if source is not None and self._hearsay_from.get(source, 0) >= self.max_per_source:
            return None
        if len(self._peers) >= self.max_peers and (source is not None or not self._evict()):
            return None
        state = self._peers[peer_id] = PeerState(peer_id, learned_at=self._clock())
        if source is not None:
            state.learned_from = source
            self._hearsay_from[source] = self._hearsay_from.get(source, 0) + 1
        return state

    def _evict(self) -> bool:
        """Make room for a first-hand peer: forget the oldest hearsay entry that never
        connected. False if there is none."""
        victims = [s for s in self._peers.values() if s.hearsay and not s.connected]
        if not victims:
            return False
        self._forget(min(victims, key=lambda s: (s.learned_at, s.peer_id)).peer_id)
        return True

    def _forget(self, peer_id: str) -> None:
        state = self._peers.pop(peer_id, None)
        if state is not None:
            self._vouched(state)

    def _vouched(self, state: PeerState) -> None:
        """The entry is no longer hearsay (or is gone): release its source's quota."""
        source = state.learned_from
        if source is None:
            return
        state.learned_from = None
        left = self._hearsay_from.get(source, 0) - 1
        if left > 0:
            self._hearsay_from[source] = left
        else:
            self._hearsay_from.pop(source, None)

    def hearsay_from(self, source: str) -> int:
        """How many entries are in the table on ``source``'s word alone."""
        return self._hearsay_from.get(source, 0)

    def can_learn_from(self, source: str) -> bool:
        """Whether ``source`` may still teach us a new peer (its quota and the table)."""
        if self._hearsay_from.get(source, 0) >= self.max_per_source:
            return False
        return len(self._peers) < self.max_peers

    def learn(self, peer_id: str, addrs: list[str]) -> bool:
        """Record addresses the operator gave (bootstrap). True if the peer was new."""
        new = peer_id not in self._peers
        state = self._state(peer_id)
        if state is None:
            return False
        self._vouched(state)
        _add_addrs(state.static_addrs, addrs)
        return new

    def remember(self, peer_id: str, addrs: list[str]) -> bool:
        """Take a peer remembered from an earlier run (the peer store) at ``addrs``: it is
        dialled, as backoff allows, for at least ``redial_for_s`` from now. True if the peer
        was new to the table."""
        new = peer_id not in self._peers
        state = self._state(peer_id)
        if state is None:
            return False
        self._vouched(state)
        _add_addrs(state.remembered_addrs, addrs)
        state.redial_until = max(state.redial_until, self._clock() + self.redial_for_s)
        return new

    def is_member(self, state: PeerState) -> bool:
        """Whether ``state`` is a peer this node met itself (it said hello, or was
        remembered from an earlier run): such a peer is redialled for ``redial_for_s``."""
        return state.card is not None or state.redial_until > 0

    def _keep_until(self, state: PeerState) -> float:
        seen = state.last_seen + self.redial_for_s if state.last_seen is not None else 0.0
        return max(state.redial_until, seen)

    def learn_record(self, record: AddrRecord, source: str) -> Learned:
        """Take a verified address record that ``source`` relayed. The newest record (by
        ``seq``) of a peer replaces older ones; a new peer counts against ``source``'s quota."""
        known = self._peers.get(record.peer_id)
        if known is None:
            state = self._state(record.peer_id, source=source)
            if state is None:
                return Learned.REFUSED
            state.record = record
            return Learned.NEW
        if known.record is not None and known.record.seq >= record.seq:
            return Learned.KNOWN
        known.record = record
        return Learned.UPDATED

    def accept_card(
        self, card: NodeCard, from_peer: str, record: AddrRecord | None = None
    ) -> PeerState | None:
        """Record a card received first-hand from ``from_peer``, with its verified record."""
        if card.peer_id != from_peer:
            raise CardMismatchError(
                f"peer {from_peer} sent a card for {card.peer_id}; cards are accepted only "
                "from the node they describe"
            )
        state = self._state(from_peer)
        if state is None:
            return None
        self._vouched(state)
        now = self._clock()
        state.card = card
        state.card_expires_at = now + card.ttl_s
        state.last_seen = now
        state.failed_dials = 0
        if record is not None and (state.record is None or record.seq >= state.record.seq):
            state.record = record
        return state

    def set_connected(self, peer_id: str, connected: bool) -> None:
        """Track connection state of known peers. Unknown connections (a CLI client, a
        peer that has not said hello yet) are not peers until they send a card."""
        state = self._peers.get(peer_id)
        if state is not None:
            state.connected = connected
            if connected:
                state.last_seen = self._clock()

    def has_fresh_card(self, peer_id: str) -> bool:
        state = self._peers.get(peer_id)
        return bool(state and state.card and self._clock() < state.card_expires_at)

    def card_age_fraction(self, peer_id: str) -> float:
        """0 right after a card arrived, 1 when it expires (or no card)."""
        state = self._peers.get(peer_id)
        if state is None or state.card is None:
            return 1.0
        remaining = state.card_expires_at - self._clock()
        return max(0.0, min(1.0, 1.0 - remaining / state.card.ttl_s))

    def providers(self, tool: str, version: str | None) -> list[tuple[PeerState, ToolCard]]:
        now = self._clock()
        out = []
        for state in self._peers.values():
            card = state.tool(tool, version, now)
            if card is not None:
                out.append((state, card))
        return out

    def installers(self) -> list[PeerState]:
        """Peers whose fresh cards say they install the packages steps name
        (``tools.install``)."""
        now = self._clock()
        return [
            state
            for state in self._peers.values()
            if state.card is not None
            and now < state.card_expires_at
            and state.card.installs is not None
            and state.card.installs.allowed
        ]

    def peer_refs(self, limit: int, *, exclude: str | None = None) -> list[PeerRef]:
        """Peers worth telling others about: heard from recently, with a signed address
        record to pass on (a receiver dials no other address), and not excluded."""
        now = self._clock()
        refs = [
            PeerRef(
                peer_id=s.peer_id,
                addrs=s.record.dial_addrs()[:8],
                addr_record=s.record.encoded,
            )
            for s in self.all()
            if s.record is not None
            and s.record.addrs
            and s.peer_id != exclude
            and (s.connected or now < s.card_expires_at)
            and not self.is_excluded(s.peer_id)
        ]
        return refs[:limit]

    # -- dialling ------------------------------------------------------------------------

    def to_dial(self, *, retry_after_s: float) -> list[PeerState]:
        """Known peers without a connection, not tried recently, with an address that is
        not backed off."""
        now = self._clock()
        return [
            s
            for s in self.all()
            if not s.connected
            and (s.last_dial_at is None or now - s.last_dial_at >= retry_after_s)
            and self.dialable_addrs(s.peer_id)
        ]

    def dialable_addrs(self, peer_id: str) -> list[str]:
        """The peer's addresses that may be dialled now: not backed off after failures and
        not being dialled already (for this or any other peer id)."""
        state = self._peers.get(peer_id)
        if state is None:
            return []
        now = self._clock()
        out = []
        for addr in state.addrs:
            base = transport_part(addr)
            if base is None or base in self._dialling:
                continue
            backoff = self._backoff.get(base)
            if backoff is None or now >= backoff.retry_at:
                out.append(addr)
        return out

    def dial_started(self, peer_id: str, addrs: Iterable[str]) -> None:
        state = self._peers.get(peer_id)
        if state is not None:
            state.last_dial_at = self._clock()
        self._dialling.update(b for a in addrs if (b := transport_part(a)))

    def dial_ended(self, peer_id: str, addrs: Iterable[str], *, ok: bool) -> bool:
        """Record how a dial of ``addrs`` went. A failure backs each address off (a
        member's at most ``redial_backoff_max_s``); a peer that keeps failing and whose card
        has expired is forgotten (returns True) — a member only ``redial_for_s`` after it
        was last seen, and never one whose address the operator gave (bootstrap): that one
        is retried as backoff allows."""
        now = self._clock()
        bases = [b for a in addrs if (b := transport_part(a))]
        self._dialling.difference_update(bases)
        state = self._peers.get(peer_id)
        cap = self.backoff_max_s
        if state is not None and self.is_member(state):
            cap = min(cap, self.redial_backoff_max_s)
        for base in bases:
            if ok:
                self._backoff.pop(base, None)
                continue
            backoff = self._backoff.setdefault(base, AddrBackoff())
            backoff.failures += 1
            delay = min(cap, self.backoff_s * 2 ** min(backoff.failures - 1, 30))
            backoff.retry_at = now + delay
        self._trim_backoff(now)
        if state is None:
            return False
        if ok:
            state.failed_dials = 0
            return False
        state.failed_dials += 1
        if (
            state.failed_dials >= self.FORGET_AFTER_FAILED_DIALS
            and not state.static_addrs
            and not state.connected
            and now >= state.card_expires_at
            and now >= self._keep_until(state)
        ):
            self._forget(peer_id)
            return True
        return False

    def backoff(self, addr: str) -> AddrBackoff | None:
        base = transport_part(addr)
        return self._backoff.get(base) if base else None

    def _trim_backoff(self, now: float) -> None:
        # bounded: addresses whose wait is long over are forgotten first
        limit = 4 * self.max_peers
        if len(self._backoff) <= limit:
            return
        for base, _ in sorted(self._backoff.items(), key=lambda kv: kv[1].retry_at):
            if len(self._backoff) <= limit:
                break
            del self._backoff[base]

    # -- evidence ------------------------------------------------------------------------

    def step_started(self, peer_id: str) -> None:
        state = self._peers.get(peer_id)
        if state is not None:
            state.outstanding += 1

    def step_ended(self, peer_id: str) -> None:
        state = self._peers.get(peer_id)
        if state is not None and state.outstanding > 0:
            state.outstanding -= 1

    def record_failure(self, peer_id: str) -> None:
        """A step handed to the peer produced no valid result (lost, broken, invalid)."""
        state = self._peers.get(peer_id)
        if state is not None:
            state.failures += 1
            state.failed += 1
            state.last_failure_at = self._clock()

    def record_success(
        self,
        peer_id: str,
        rtt_ms: float | None = None,
        *,
        tool: str | None = None,
        run_ms: float | None = None,
    ) -> None:
        """A step handed to the peer came back with a valid result. Call it while the step
        still counts as outstanding: how many were outstanding is what the peer sustained."""
        state = self._peers.get(peer_id)
        if state is None:
            return
        state.failures = 0
        state.done += 1
        state.sustained = max(state.sustained, state.outstanding, 1)
        if rtt_ms is not None:
            state.rtt_ms = rtt_ms if state.rtt_ms is None else 0.8 * state.rtt_ms + 0.2 * rtt_ms
        if tool is not None and run_ms is not None:
            old = state.run_ms.get(tool)
            if old is None and len(state.run_ms) >= MAX_TOOLS_TIMED:
                return
            state.run_ms[tool] = (
                run_ms if old is None else (1 - RUN_TIME_WEIGHT) * old + RUN_TIME_WEIGHT * run_ms
            )

    def recent_failures(self, peer_id: str) -> int:
        state = self._peers.get(peer_id)
        if state is None or state.last_failure_at is None:
            return 0
        if self._clock() - state.last_failure_at > self.FAILURE_MEMORY_S:
            return 0
        return state.failures

    # -- exclusion -----------------------------------------------------------------------

    def exclude(self, peer_id: str, reason: str, *, for_s: float | None = None) -> Exclusion:
        """Keep ``peer_id`` out of placement for ``for_s`` (default: ``exclude_s``) because
        of ``reason`` (one line, shown to users). A later exclusion replaces an earlier one
        if it lasts longer. Works for peers not (or no longer) in the table."""
        now = self._clock()
        until = now + (self.exclude_s if for_s is None else for_s)
        current = self.exclusion(peer_id)
        if current is not None and current.until >= until:
            return current
        self._excluded.pop(peer_id, None)
        if len(self._excluded) >= self.MAX_EXCLUSIONS:
            # bounded: the exclusion that ends first goes
            del self._excluded[min(self._excluded, key=lambda p: self._excluded[p].until)]
        entry = self._excluded[peer_id] = Exclusion(reason, now, until)
        return entry

    def exclusion(self, peer_id: str) -> Exclusion | None:
        """The peer's current exclusion, or None."""
        entry = self._excluded.get(peer_id)
        if entry is not None and self._clock() >= entry.until:
            del self._excluded[peer_id]
            return None
        return entry

    def excluded_peers(self) -> list[str]:
        """Peer ids excluded now, whether or not they are in the table."""
        return sorted(p for p in list(self._excluded) if self.exclusion(p) is not None)

    def is_excluded(self, peer_id: str) -> bool:
        return self.exclusion(peer_id) is not None

    def pardon(self, peer_id: str) -> None:
        """End an exclusion early."""
        self._excluded.pop(peer_id, None)


def _add_addrs(known: list[str], addrs: list[str]) -> None:
    """Append the addresses ``known`` lacks, in order, keeping at most MAX_ADDRS_PER_PEER."""
    for addr in addrs:
        if addr not in known:
            known.append(addr)
    del known[MAX_ADDRS_PER_PEER:]
