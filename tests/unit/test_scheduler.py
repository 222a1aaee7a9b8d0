"""Placement policy (node.scheduler.place) and the peer registry it draws candidates from."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from node.errors import PlacementError
from node.registry import CardMismatchError, PeerRegistry
from node.scheduler import Candidate, place, short
from protocols.discovery import LoadInfo, NodeCard, PeerRef, ToolCard

SELF = "12D3KooWSelf000000000000000000000000000000000000000"
PEER_A = "12D3KooWAaaa000000000000000000000000000000000000000"
PEER_B = "12D3KooWBbbb000000000000000000000000000000000000000"
PEER_C = "12D3KooWCccc000000000000000000000000000000000000000"


def local(running: int = 0, capacity: int = 4) -> Candidate:
    return Candidate(SELF, True, "1.0.0", running=running, capacity=capacity)


def remote(
    node: str,
    *,
    running: int = 0,
    capacity: int = 4,
    rtt_ms: float | None = None,
    failures: int = 0,
    version: str = "1.0.0",
) -> Candidate:
    return Candidate(node, False, version, running, capacity, rtt_ms, failures)


# -- place -----------------------------------------------------------------------------------


def test_local_is_preferred_when_it_has_the_tool_and_is_not_busy() -> None:
    decision = place("text.upper", None, [remote(PEER_A, rtt_ms=1), local(running=3)])
    assert decision.node == SELF
    assert decision.local
    assert decision.reason == "local: this node offers text.upper 1.0.0"


def test_remote_when_the_local_node_lacks_the_tool() -> None:
    decision = place("text.upper", "1", [remote(PEER_A, running=1, rtt_ms=12.4)])
    assert decision.node == PEER_A
    assert not decision.local
    assert decision.reason.startswith("remote: this node does not offer it; ")
    assert short(PEER_A) in decision.reason
    assert "the only peer offering text.upper 1.0.0" in decision.reason
    assert "load 1/4" in decision.reason
    assert "rtt 12 ms" in decision.reason


def test_busy_local_with_a_remote_candidate_goes_remote() -> None:
    decision = place("text.upper", None, [local(running=4, capacity=4), remote(PEER_A)])
    assert decision.node == PEER_A
    assert "this node is busy (4/4)" in decision.reason


def test_busy_local_without_a_remote_candidate_stays_local() -> None:
    decision = place("text.upper", None, [local(running=9, capacity=4)])
    assert decision.local
    assert "busy, but no peer offers it" in decision.reason


def test_prefer_local_false_goes_to_peers_first() -> None:
    decision = place("t", None, [local(), remote(PEER_A)], prefer_local=False)
    assert decision.node == PEER_A


def test_zero_capacity_local_counts_as_capacity_one() -> None:
    assert place("t", None, [local(running=0, capacity=0), remote(PEER_A)]).local


def test_best_remote_by_failures_first() -> None:
    candidates = [
        remote(PEER_A, failures=1, running=0, rtt_ms=1),
        remote(PEER_B, failures=0, running=3, rtt_ms=200),
    ]
    decision = place("t", None, candidates)
    assert decision.node == PEER_B
    assert "best of 2 peers offering t" in decision.reason


def test_best_remote_by_load_when_failures_tie() -> None:
    candidates = [
        remote(PEER_A, running=3, capacity=4, rtt_ms=1),
        remote(PEER_B, running=1, capacity=4, rtt_ms=200),
    ]
    assert place("t", None, candidates).node == PEER_B


def test_load_is_relative_to_capacity() -> None:
    candidates = [
        remote(PEER_A, running=2, capacity=2),  # full
        remote(PEER_B, running=4, capacity=16),  # a quarter
    ]
    assert place("t", None, candidates).node == PEER_B


def test_best_remote_by_rtt_when_failures_and_load_tie() -> None:
    candidates = [remote(PEER_A, rtt_ms=80), remote(PEER_B, rtt_ms=5), remote(PEER_C, rtt_ms=30)]
    assert place("t", None, candidates).node == PEER_B


def test_unknown_rtt_counts_as_50_ms() -> None:
    assert place("t", None, [remote(PEER_A), remote(PEER_B, rtt_ms=60)]).node == PEER_A
    assert place("t", None, [remote(PEER_A), remote(PEER_B, rtt_ms=40)]).node == PEER_B


def test_ties_are_broken_by_peer_id() -> None:
    candidates = [remote(PEER_C), remote(PEER_A), remote(PEER_B)]
    assert place("t", None, candidates).node == PEER_A
    assert place("t", None, list(reversed(candidates))).node == PEER_A


def test_reason_mentions_recent_failures() -> None:
    decision = place("t", None, [remote(PEER_A, failures=2)])
    assert "2 recent failures" in decision.reason


def test_excluded_nodes_are_skipped() -> None:
    candidates = [local(), remote(PEER_A, rtt_ms=1), remote(PEER_B, rtt_ms=90)]
    decision = place("t", None, candidates, exclude=[SELF, PEER_A])
    assert decision.node == PEER_B
    assert "after 2 failed attempt(s)" in decision.reason
    assert "this node does not offer it" in decision.reason  # the local one is out


def test_no_candidates_names_the_tool() -> None:
    with pytest.raises(PlacementError, match=r"no node in the swarm offers tool 'text\.upper'"):
        place("text.upper", None, [])


def test_no_candidates_names_the_tool_and_version() -> None:
    with pytest.raises(PlacementError) as info:
        place("text.upper", "2.1", [])
    assert "'text.upper@2.1'" in str(info.value)


def test_all_excluded_is_a_placement_error_naming_the_tool_and_the_tried_nodes() -> None:
    candidates = [local(), remote(PEER_A)]
    with pytest.raises(PlacementError) as info:
        place("math.add", "1", candidates, exclude=[SELF, PEER_A])
    text = str(info.value)
    assert "no node left to run tool 'math.add@1'" in text
    assert short(SELF) in text and short(PEER_A) in text


def test_short_peer_ids() -> None:
    assert short("abc") == "abc"
    assert short(PEER_A) == f"{PEER_A[:8]}…{PEER_A[-6:]}"


# -- PeerRegistry ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def card(
    peer_id: str,
    tools: Sequence[tuple[str, str]] = (),
    *,
    ttl_s: float = 30.0,
    addrs: list[str] | None = None,
) -> NodeCard:
    return NodeCard(
        peer_id=peer_id,
        addrs=addrs if addrs is not None else [f"/ip4/10.0.0.1/tcp/4001/p2p/{peer_id}"],
        version="0.1.0",
        tools=[ToolCard(name=n, version=v) for n, v in tools],
        load=LoadInfo(running=0, capacity=2),
        ttl_s=ttl_s,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> PeerRegistry:
    return PeerRegistry(SELF, clock=clock)


def test_learn_records_addresses(registry: PeerRegistry) -> None:
    assert registry.learn(PEER_A, ["/ip4/1.2.3.4/tcp/1"]) is True
    assert registry.learn(PEER_A, ["/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/2"]) is False
    state = registry.get(PEER_A)
    assert state is not None
    assert state.addrs == ["/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/2"]
    assert state.card is None and not state.connected
    assert len(registry) == 1


def test_learn_ignores_ourselves(registry: PeerRegistry) -> None:
    assert registry.learn(SELF, ["/ip4/1.2.3.4/tcp/1"]) is False
    assert registry.get(SELF) is None


def test_learn_keeps_at_most_16_addresses(registry: PeerRegistry) -> None:
    registry.learn(PEER_A, [f"/ip4/1.2.3.4/tcp/{i}" for i in range(40)])
    state = registry.get(PEER_A)
    assert state is not None and len(state.addrs) == 16


def test_registry_is_bounded(clock: FakeClock) -> None:
    registry = PeerRegistry(SELF, max_peers=2, clock=clock)
    assert registry.learn(PEER_A, []) and registry.learn(PEER_B, [])
    assert registry.learn(PEER_C, ["/ip4/1.1.1.1/tcp/1"]) is False
    assert registry.accept_card(card(PEER_C), PEER_C) is None
    assert registry.get(PEER_C) is None
    assert len(registry) == 2


def test_accept_card_refuses_a_card_for_another_peer(registry: PeerRegistry) -> None:
    with pytest.raises(CardMismatchError, match="cards are accepted only from the node"):
        registry.accept_card(card(PEER_B), from_peer=PEER_A)
    assert registry.get(PEER_A) is None
    assert registry.get(PEER_B) is None


def test_accept_card_records_the_card(registry: PeerRegistry, clock: FakeClock) -> None:
    registry.learn(PEER_A, ["/ip4/9.9.9.9/tcp/1"])
    state = registry.accept_card(card(PEER_A, ttl_s=30), PEER_A)
    assert state is not None
    assert state.card is not None and state.card.peer_id == PEER_A
    assert state.card_expires_at == clock.now + 30
    assert state.last_seen == clock.now
    # the card's own addresses come first
    assert state.addrs == [f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER_A}", "/ip4/9.9.9.9/tcp/1"]


def test_card_freshness_and_age(registry: PeerRegistry, clock: FakeClock) -> None:
    assert registry.card_age_fraction(PEER_A) == 1.0
    registry.accept_card(card(PEER_A, ttl_s=20), PEER_A)
    assert registry.has_fresh_card(PEER_A)
    assert registry.card_age_fraction(PEER_A) == 0.0
    clock.advance(5)
    assert registry.card_age_fraction(PEER_A) == pytest.approx(0.25)
    clock.advance(15)
    assert not registry.has_fresh_card(PEER_A)
    assert registry.card_age_fraction(PEER_A) == 1.0


def test_providers_honour_versions(registry: PeerRegistry) -> None:
    registry.accept_card(card(PEER_A, [("text.upper", "1.2.0"), ("math.add", "1.0.0")]), PEER_A)
    registry.accept_card(card(PEER_B, [("text.upper", "2.0.0")]), PEER_B)

    def who(tool: str, version: str | None) -> list[str]:
        return sorted(state.peer_id for state, _ in registry.providers(tool, version))

    assert who("text.upper", None) == [PEER_A, PEER_B]
    assert who("text.upper", "1") == [PEER_A]
    assert who("text.upper", "2.0.0") == [PEER_B]
    assert who("text.upper", "1.3") == []
    assert who("math.add", "*") == [PEER_A]
    assert who("text.lower", None) == []
    ((_, tool_card),) = registry.providers("text.upper", "2")
    assert tool_card.version == "2.0.0"


def test_providers_honour_card_expiry(registry: PeerRegistry, clock: FakeClock) -> None:
    registry.accept_card(card(PEER_A, [("t", "1")], ttl_s=10), PEER_A)
    registry.accept_card(card(PEER_B, [("t", "1")], ttl_s=60), PEER_B)
    clock.advance(9.9)
    assert len(registry.providers("t", None)) == 2
    clock.advance(0.1)  # PEER_A's card expires now
    assert [s.peer_id for s, _ in registry.providers("t", None)] == [PEER_B]
    registry.accept_card(card(PEER_A, [("t", "1")], ttl_s=10), PEER_A)  # refreshed
    assert len(registry.providers("t", None)) == 2


def test_set_connected_does_not_create_unknown_peers(
    registry: PeerRegistry, clock: FakeClock
) -> None:
    registry.set_connected(PEER_A, True)
    assert registry.get(PEER_A) is None
    assert len(registry) == 0
    registry.learn(PEER_A, [])
    clock.advance(3)
    registry.set_connected(PEER_A, True)
    state = registry.get(PEER_A)
    assert state is not None and state.connected and state.last_seen == clock.now
    clock.advance(3)
    registry.set_connected(PEER_A, False)
    assert not state.connected and state.last_seen == clock.now - 3


def test_peer_refs_lists_connected_or_fresh_peers_with_addresses(
    registry: PeerRegistry, clock: FakeClock
) -> None:
    registry.accept_card(card(PEER_A, ttl_s=10), PEER_A)  # fresh card
    registry.learn(PEER_B, ["/ip4/2.2.2.2/tcp/1"])  # only heard of: not shared
    registry.learn(PEER_C, ["/ip4/3.3.3.3/tcp/1"])
    registry.set_connected(PEER_C, True)  # connected: shared
    assert registry.peer_refs(10) == [
        PeerRef(peer_id=PEER_A, addrs=[f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER_A}"]),
        PeerRef(peer_id=PEER_C, addrs=["/ip4/3.3.3.3/tcp/1"]),
    ]
    assert [r.peer_id for r in registry.peer_refs(10, exclude=PEER_A)] == [PEER_C]
    assert [r.peer_id for r in registry.peer_refs(1)] == [PEER_A]
    clock.advance(10)  # PEER_A's card expired and it is not connected
    assert [r.peer_id for r in registry.peer_refs(10)] == [PEER_C]


def test_peer_refs_skip_peers_without_addresses_and_cap_addresses(
    registry: PeerRegistry,
) -> None:
    registry.accept_card(card(PEER_A, addrs=[]), PEER_A)
    registry.learn(PEER_B, [f"/ip4/2.2.2.2/tcp/{i}" for i in range(12)])
    registry.set_connected(PEER_B, True)
    refs = registry.peer_refs(10)
    assert [r.peer_id for r in refs] == [PEER_B]
    assert len(refs[0].addrs) == 8


def test_to_dial_spaces_retries(registry: PeerRegistry, clock: FakeClock) -> None:
    registry.learn(PEER_A, ["/ip4/1.1.1.1/tcp/1"])
    registry.learn(PEER_B, [])  # no address: cannot be dialled
    registry.learn(PEER_C, ["/ip4/3.3.3.3/tcp/1"])
    registry.set_connected(PEER_C, True)  # already connected
    assert [s.peer_id for s in registry.to_dial(retry_after_s=10)] == [PEER_A]
    registry.mark_dialed(PEER_A)
    assert registry.to_dial(retry_after_s=10) == []
    clock.advance(9.9)
    assert registry.to_dial(retry_after_s=10) == []
    clock.advance(0.1)
    assert [s.peer_id for s in registry.to_dial(retry_after_s=10)] == [PEER_A]


def test_recent_failures_are_forgotten_after_the_failure_memory(
    registry: PeerRegistry, clock: FakeClock
) -> None:
    registry.learn(PEER_A, [])
    assert registry.recent_failures(PEER_A) == 0
    registry.record_failure(PEER_A)
    clock.advance(10)
    registry.record_failure(PEER_A)
    assert registry.recent_failures(PEER_A) == 2
    clock.advance(PeerRegistry.FAILURE_MEMORY_S)  # exactly the memory since the last failure
    assert registry.recent_failures(PEER_A) == 2
    clock.advance(0.001)
    assert registry.recent_failures(PEER_A) == 0


def test_success_clears_failures_and_smooths_rtt(registry: PeerRegistry) -> None:
    registry.learn(PEER_A, [])
    registry.record_failure(PEER_A)
    registry.record_success(PEER_A, rtt_ms=100)
    assert registry.recent_failures(PEER_A) == 0
    state = registry.get(PEER_A)
    assert state is not None and state.rtt_ms == 100
    registry.record_success(PEER_A, rtt_ms=200)
    assert state.rtt_ms == pytest.approx(120)


def test_bookkeeping_for_unknown_peers_is_ignored(registry: PeerRegistry) -> None:
    registry.record_failure(PEER_A)
    registry.record_success(PEER_A, rtt_ms=1)
    registry.mark_dialed(PEER_A)
    assert registry.recent_failures(PEER_A) == 0
    assert len(registry) == 0


def test_previous_node_is_asked_again_first() -> None:
    peers = [
        Candidate("12D3KooWPeerAAAAAAAAAAAAAAAAAAAA", False, "1.0.0", running=5, capacity=1),
        Candidate("12D3KooWPeerBBBBBBBBBBBBBBBBBBBB", False, "1.0.0", running=0, capacity=4),
        Candidate("12D3KooWLocalLLLLLLLLLLLLLLLLLLL", True, "1.0.0"),
    ]
    d = place("util.sleep", None, peers, previous="12D3KooWPeerAAAAAAAAAAAAAAAAAAAA")
    assert d.node == "12D3KooWPeerAAAAAAAAAAAAAAAAAAAA" and not d.local
    assert d.reason.startswith("re-attach:")
    # an excluded or vanished previous node is ignored
    d = place(
        "util.sleep",
        None,
        peers,
        previous="12D3KooWPeerAAAAAAAAAAAAAAAAAAAA",
        exclude={"12D3KooWPeerAAAAAAAAAAAAAAAAAAAA"},
    )
    assert d.local and not d.reason.startswith("re-attach")
    d = place("util.sleep", None, peers, previous="12D3KooWGoneGGGGGGGGGGGGGGGGGGGG")
    assert d.local
