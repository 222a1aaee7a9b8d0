"""What this node knows about its peers: addresses, cards, connection state, history.

Pure bookkeeping (no I/O); the clock is injected. Cards are accepted only first-hand, from
the authenticated peer they describe, so no signature is needed to trust them; addresses
learned by peer exchange are only hints to dial.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from protocols.discovery import NodeCard, PeerRef, ToolCard
from workflows.tools import version_matches


class CardMismatchError(ValueError):
    """A peer sent a card describing another node."""


@dataclass
class PeerState:
    peer_id: str
    addrs: list[str] = field(default_factory=list)
    card: NodeCard | None = None
    card_expires_at: float = 0.0
    connected: bool = False
    last_seen: float | None = None
    failures: int = 0
    last_failure_at: float | None = None
    rtt_ms: float | None = None
    inflight: int = 0
    last_dial_at: float | None = None
    failed_dials: int = 0

    def tool(self, name: str, version: str | None, now: float) -> ToolCard | None:
        if self.card is None or now >= self.card_expires_at:
            return None
        for t in self.card.tools:
            if t.name == name and version_matches(t.version, version):
                return t
        return None


class PeerRegistry:
    FAILURE_MEMORY_S = 60.0

    def __init__(
        self, self_id: str, *, max_peers: int = 256, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.self_id = self_id
        self.max_peers = max_peers
        self._clock = clock
        self._peers: dict[str, PeerState] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, peer_id: str) -> PeerState | None:
        return self._peers.get(peer_id)

    def all(self) -> list[PeerState]:
        return sorted(self._peers.values(), key=lambda p: p.peer_id)

    def _state(self, peer_id: str) -> PeerState | None:
        if peer_id == self.self_id:
            return None
        state = self._peers.get(peer_id)
        if state is None:
            if len(self._peers) >= self.max_peers:
                return None
            state = self._peers[peer_id] = PeerState(peer_id)
        return state

    def learn(self, peer_id: str, addrs: list[str]) -> bool:
        """Record addresses for a peer (bootstrap or peer exchange). True if it was new."""
        new = peer_id not in self._peers
        state = self._state(peer_id)
        if state is None:
            return False
        for addr in addrs:
            if addr not in state.addrs:
                state.addrs.append(addr)
        del state.addrs[16:]
        return new

    def accept_card(self, card: NodeCard, from_peer: str) -> PeerState | None:
        if card.peer_id != from_peer:
            raise CardMismatchError(
                f"peer {from_peer} sent a card for {card.peer_id}; cards are accepted only "
                "from the node they describe"
            )
        state = self._state(from_peer)
        if state is None:
            return None
        now = self._clock()
        state.card = card
        state.card_expires_at = now + card.ttl_s
        state.last_seen = now
        state.failed_dials = 0
        for addr in card.addrs:
            if addr not in state.addrs:
                state.addrs.insert(0, addr)
        del state.addrs[16:]
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

    def peer_refs(self, limit: int, *, exclude: str | None = None) -> list[PeerRef]:
        """Peers worth telling others about: those we have heard from recently."""
        now = self._clock()
        refs = [
            PeerRef(peer_id=s.peer_id, addrs=s.addrs[:8])
            for s in self.all()
            if s.addrs and s.peer_id != exclude and (s.connected or now < s.card_expires_at)
        ]
        return refs[:limit]

    def to_dial(self, *, retry_after_s: float) -> list[PeerState]:
        """Known peers without a connection that we have not tried recently."""
        now = self._clock()
        return [
            s
            for s in self.all()
            if not s.connected
            and s.addrs
            and (s.last_dial_at is None or now - s.last_dial_at >= retry_after_s)
        ]

    FORGET_AFTER_FAILED_DIALS = 5

    def dial_failed(self, peer_id: str) -> bool:
        """Count a failed dial. A peer that keeps failing and whose card has expired is
        forgotten (returns True); peer exchange can teach it to us again."""
        state = self._peers.get(peer_id)
        if state is None:
            return False
        state.failed_dials += 1
        if (
            state.failed_dials >= self.FORGET_AFTER_FAILED_DIALS
            and not state.connected
            and self._clock() >= state.card_expires_at
        ):
            del self._peers[peer_id]
            return True
        return False

    def mark_dialed(self, peer_id: str) -> None:
        state = self._peers.get(peer_id)
        if state is not None:
            state.last_dial_at = self._clock()

    def record_failure(self, peer_id: str) -> None:
        state = self._peers.get(peer_id)
        if state is not None:
            state.failures += 1
            state.last_failure_at = self._clock()

    def record_success(self, peer_id: str, rtt_ms: float | None = None) -> None:
        state = self._peers.get(peer_id)
        if state is not None:
            state.failures = 0
            if rtt_ms is not None:
                state.rtt_ms = rtt_ms if state.rtt_ms is None else 0.8 * state.rtt_ms + 0.2 * rtt_ms

    def recent_failures(self, peer_id: str) -> int:
        state = self._peers.get(peer_id)
        if state is None or state.last_failure_at is None:
            return 0
        if self._clock() - state.last_failure_at > self.FAILURE_MEMORY_S:
            return 0
        return state.failures
