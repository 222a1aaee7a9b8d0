"""The peer registry: cards, addresses by provenance, peer-exchange quotas, dial backoff,
evidence and exclusion. Pure bookkeeping on a fake clock."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from node.addr_record import AddrRecord
from node.registry import CardMismatchError, Learned, PeerRegistry
from protocols.discovery import LoadInfo, NodeCard, PeerRef, ToolCard

SELF = "12D3KooWSelf000000000000000000000000000000000000000"
PEER_A = "12D3KooWAaaa000000000000000000000000000000000000000"
PEER_B = "12D3KooWBbbb000000000000000000000000000000000000000"
PEER_C = "12D3KooWCccc000000000000000000000000000000000000000"
SOURCE = "12D3KooWSrce000000000000000000000000000000000000000"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def record(peer_id: str, *addrs: str, seq: int = 1) -> AddrRecord:
    """A record as discovery hands it over once verified (the registry does not verify)."""
    return AddrRecord(peer_id, addrs, seq, f"signed:{peer_id}:{seq}")


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


def peer_name(i: int) -> str:
    return f"12D3KooWPeer{i:039d}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> PeerRegistry:
    return PeerRegistry(SELF, clock=clock)


# -- operator-given addresses and cards ------------------------------------------------------


def test_learn_records_addresses(registry: PeerRegistry) -> None:
    assert registry.learn(PEER_A, ["/ip4/1.2.3.4/tcp/1"]) is True
    assert registry.learn(PEER_A, ["/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/2"]) is False
    state = registry.get(PEER_A)
    assert state is not None
    assert state.addrs == ["/ip4/1.2.3.4/tcp/1", "/ip4/1.2.3.4/tcp/2"]
    assert state.card is None and not state.connected and not state.hearsay
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
    rec = record(PEER_A, "/ip4/10.0.0.2/tcp/4001")
    state = registry.accept_card(card(PEER_A, ttl_s=30), PEER_A, rec)
    assert state is not None
    assert state.card is not None and state.card.peer_id == PEER_A
    assert state.card_expires_at == clock.now + 30
    assert state.last_seen == clock.now
    assert state.record == rec
    # the card's own addresses come first, then the signed record's, then the operator's
    assert state.addrs == [
        f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER_A}",
        f"/ip4/10.0.0.2/tcp/4001/p2p/{PEER_A}",
        "/ip4/9.9.9.9/tcp/1",
    ]


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


# -- peer exchange: signed records, quotas, eviction -------------------------------------------


def test_a_relayed_record_teaches_a_new_hearsay_peer(registry: PeerRegistry) -> None:
    rec = record(PEER_A, "/ip4/1.1.1.1/tcp/1")
    assert registry.learn_record(rec, SOURCE) is Learned.NEW
    state = registry.get(PEER_A)
    assert state is not None and state.hearsay and state.learned_from == SOURCE
    assert state.addrs == [f"/ip4/1.1.1.1/tcp/1/p2p/{PEER_A}"]
    assert registry.hearsay_from(SOURCE) == 1


def test_the_newest_record_wins(registry: PeerRegistry) -> None:
    registry.learn_record(record(PEER_A, "/ip4/1.1.1.1/tcp/1", seq=5), SOURCE)
    assert registry.learn_record(record(PEER_A, "/ip4/6.6.6.6/tcp/6", seq=4), SOURCE) is (
        Learned.KNOWN
    )
    assert registry.learn_record(record(PEER_A, "/ip4/1.1.1.1/tcp/1", seq=5), PEER_B) is (
        Learned.KNOWN
    )
    assert registry.learn_record(record(PEER_A, "/ip4/2.2.2.2/tcp/2", seq=6), PEER_B) is (
        Learned.UPDATED
    )
    state = registry.get(PEER_A)
    assert state is not None and state.addrs == [f"/ip4/2.2.2.2/tcp/2/p2p/{PEER_A}"]
    assert state.learned_from == SOURCE  # still on the first source's word


def test_a_source_teaches_at_most_its_quota(clock: FakeClock) -> None:
    registry = PeerRegistry(SELF, max_per_source=3, clock=clock)
    outcomes = [
        registry.learn_record(record(peer_name(i), "/ip4/1.1.1.1/tcp/1"), SOURCE) for i in range(10)
    ]
    assert outcomes == [Learned.NEW] * 3 + [Learned.REFUSED] * 7
    assert len(registry) == 3 and not registry.can_learn_from(SOURCE)
    # another source has its own quota
    assert registry.learn_record(record(PEER_A, "/ip4/2.2.2.2/tcp/2"), PEER_B) is Learned.NEW


def test_a_first_hand_card_releases_the_sources_quota(clock: FakeClock) -> None:
    registry = PeerRegistry(SELF, max_per_source=1, clock=clock)
    registry.learn_record(record(PEER_A, "/ip4/1.1.1.1/tcp/1"), SOURCE)
    assert not registry.can_learn_from(SOURCE)
    registry.accept_card(card(PEER_A), PEER_A)  # A said hello itself: no longer hearsay
    state = registry.get(PEER_A)
    assert state is not None and not state.hearsay
    assert registry.hearsay_from(SOURCE) == 0
    assert registry.learn_record(record(PEER_B, "/ip4/1.1.1.1/tcp/1"), SOURCE) is Learned.NEW


def test_hearsay_never_evicts_and_first_hand_peers_evict_hearsay(clock: FakeClock) -> None:
    registry = PeerRegistry(SELF, max_peers=3, max_per_source=16, clock=clock)
    registry.accept_card(card(PEER_A), PEER_A)
    registry.learn_record(record(peer_name(1), "/ip4/1.1.1.1/tcp/1"), SOURCE)
    clock.advance(1)
    registry.learn_record(record(peer_name(2), "/ip4/1.1.1.1/tcp/1"), SOURCE)
    # full: more hearsay is refused
    assert registry.learn_record(record(peer_name(3), "/ip4/1.1.1.1/tcp/1"), SOURCE) is (
        Learned.REFUSED
    )
    # a peer that says hello itself takes the place of the oldest hearsay entry
    assert registry.accept_card(card(PEER_B), PEER_B) is not None
    assert registry.get(peer_name(1)) is None and registry.get(peer_name(2)) is not None
    assert registry.hearsay_from(SOURCE) == 1
    assert registry.accept_card(card(PEER_C), PEER_C) is not None
    assert registry.get(peer_name(2)) is None
    # nothing left to evict: first-hand peers are never pushed out
    assert registry.accept_card(card(SOURCE), SOURCE) is None
    assert len(registry) == 3


def test_peer_refs_pass_on_signed_records_of_recently_heard_peers(
    registry: PeerRegistry, clock: FakeClock
) -> None:
    rec_a = record(PEER_A, "/ip4/10.0.0.1/tcp/4001")
    registry.accept_card(card(PEER_A, ttl_s=10), PEER_A, rec_a)  # fresh card, signed record
    registry.accept_card(card(PEER_B, ttl_s=10), PEER_B)  # no record (a 0.1.0 peer): not passed
    registry.learn_record(record(PEER_C, "/ip4/3.3.3.3/tcp/1"), SOURCE)  # only heard of
    assert registry.peer_refs(10) == [
        PeerRef(
            peer_id=PEER_A,
            addrs=[f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER_A}"],
            addr_record=rec_a.encoded,
        )
    ]
    registry.set_connected(PEER_C, True)  # connected: worth passing on, with its record
    assert [r.peer_id for r in registry.peer_refs(10)] == [PEER_A, PEER_C]
    assert [r.peer_id for r in registry.peer_refs(10, exclude=PEER_A)] == [PEER_C]
    assert [r.peer_id for r in registry.peer_refs(1)] == [PEER_A]
    registry.exclude(PEER_C, "broke the protocol")
    assert [r.peer_id for r in registry.peer_refs(10)] == [PEER_A]
    clock.advance(10)  # PEER_A's card expired and it is not connected
    assert registry.peer_refs(10) == []


# -- dialling and backoff ----------------------------------------------------------------------


def test_to_dial_spaces_retries(registry: PeerRegistry, clock: FakeClock) -> None:
    registry.learn(PEER_A, ["/ip4/1.1.1.1/tcp/1"])
    registry.learn(PEER_B, [])  # no address: cannot be dialled
    registry.learn(PEER_C, ["/ip4/3.3.3.3/tcp/1"])
    registry.set_connected(PEER_C, True)  # already connected
    assert [s.peer_id for s in registry.to_dial(retry_after_s=10)] == [PEER_A]
    registry.dial_started(PEER_A, ["/ip4/1.1.1.1/tcp/1"])
    registry.dial_ended(PEER_A, ["/ip4/1.1.1.1/tcp/1"], ok=True)
    assert registry.to_dial(retry_after_s=10) == []
    clock.advance(9.9)
    assert registry.to_dial(retry_after_s=10) == []
    clock.advance(0.1)
    assert [s.peer_id for s in registry.to_dial(retry_after_s=10)] == [PEER_A]


def test_failed_dials_back_the_address_off_exponentially_up_to_a_cap(clock: FakeClock) -> None:
    registry = PeerRegistry(SELF, backoff_s=5, backoff_max_s=30, clock=clock)
    addr = "/ip4/1.1.1.1/tcp/1"
    registry.learn(PEER_A, [addr])
    waits = []
    for _ in range(6):
        assert registry.dialable_addrs(PEER_A) == [addr]
        registry.dial_started(PEER_A, [addr])
        assert registry.dialable_addrs(PEER_A) == []  # being dialled: not twice at once
        registry.dial_ended(PEER_A, [addr], ok=False)
        backoff = registry.backoff(addr)
        assert backoff is not None
        waits.append(backoff.retry_at - clock.now)
        clock.advance(waits[-1] - 0.01)
        assert registry.dialable_addrs(PEER_A) == []
        clock.advance(0.01)
    assert waits == [5, 10, 20, 30, 30, 30]
    registry.dial_started(PEER_A, [addr])
    registry.dial_ended(PEER_A, [addr], ok=True)  # a success clears it
    assert registry.backoff(addr) is None


def test_the_backoff_belongs_to_the_address_not_the_peer_id(clock: FakeClock) -> None:
    """Many made-up peer ids pointing at one address share its backoff."""
    registry = PeerRegistry(SELF, clock=clock)
    victim = "/ip4/127.0.0.1/tcp/22"
    for i in range(3):
        registry.learn_record(record(peer_name(i), victim), SOURCE)
    first = f"{victim}/p2p/{peer_name(0)}"
    assert registry.dialable_addrs(peer_name(0)) == [first]
    registry.dial_started(peer_name(0), [first])
    # while it is being dialled for one peer id it is not dialled for another
    assert registry.dialable_addrs(peer_name(1)) == []
    registry.dial_ended(peer_name(0), [first], ok=False)
    assert registry.dialable_addrs(peer_name(1)) == []
    assert registry.dialable_addrs(peer_name(2)) == []
    assert registry.to_dial(retry_after_s=0) == []


def test_a_peer_that_keeps_failing_is_forgotten_once_its_card_expired(
    registry: PeerRegistry, clock: FakeClock
) -> None:
    addr = "/ip4/1.1.1.1/tcp/1"
    registry.learn_record(record(PEER_A, addr), SOURCE)
    for i in range(PeerRegistry.FORGET_AFTER_FAILED_DIALS):
        registry.dial_started(PEER_A, [addr])
        forgotten = registry.dial_ended(PEER_A, [addr], ok=False)
        assert forgotten is (i == PeerRegistry.FORGET_AFTER_FAILED_DIALS - 1)
    assert registry.get(PEER_A) is None
    assert registry.hearsay_from(SOURCE) == 0  # its quota is released too


# -- evidence ----------------------------------------------------------------------------------


def test_evidence_counts_steps_run_times_and_what_was_sustained(
    registry: PeerRegistry,
) -> None:
    registry.accept_card(card(PEER_A), PEER_A)
    registry.step_started(PEER_A)
    registry.step_started(PEER_A)
    registry.record_success(PEER_A, 4.0, tool="text.upper", run_ms=100)  # 2 outstanding
    registry.step_ended(PEER_A)
    registry.record_success(PEER_A, 6.0, tool="text.upper", run_ms=200)
    registry.step_ended(PEER_A)
    registry.step_started(PEER_A)
    registry.record_failure(PEER_A)
    registry.step_ended(PEER_A)
    state = registry.get(PEER_A)
    assert state is not None
    assert (state.done, state.failed, state.outstanding, state.sustained) == (2, 1, 0, 2)
    assert state.run_ms["text.upper"] == pytest.approx(0.7 * 100 + 0.3 * 200)
    assert state.rtt_ms == pytest.approx(0.8 * 4 + 0.2 * 6)
    assert registry.recent_failures(PEER_A) == 1


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


def test_success_clears_recent_failures_and_smooths_rtt(registry: PeerRegistry) -> None:
    registry.learn(PEER_A, [])
    registry.record_failure(PEER_A)
    registry.record_success(PEER_A, rtt_ms=100)
    assert registry.recent_failures(PEER_A) == 0
    state = registry.get(PEER_A)
    assert state is not None and state.rtt_ms == 100 and state.failed == 1
    registry.record_success(PEER_A, rtt_ms=200)
    assert state.rtt_ms == pytest.approx(120)


def test_bookkeeping_for_unknown_peers_is_ignored(registry: PeerRegistry) -> None:
    registry.record_failure(PEER_A)
    registry.record_success(PEER_A, rtt_ms=1)
    registry.step_started(PEER_A)
    registry.step_ended(PEER_A)
    registry.dial_started(PEER_A, [])
    assert registry.dial_ended(PEER_A, [], ok=False) is False
    assert registry.recent_failures(PEER_A) == 0
    assert len(registry) == 0


# -- exclusion ---------------------------------------------------------------------------------


def test_exclusion_lasts_its_time_and_keeps_its_reason(clock: FakeClock) -> None:
    registry = PeerRegistry(SELF, exclude_s=600, clock=clock)
    registry.accept_card(card(PEER_A), PEER_A)
    assert not registry.is_excluded(PEER_A)
    entry = registry.exclude(PEER_A, "result failed the output schema")
    assert (entry.reason, entry.until) == ("result failed the output schema", clock.now + 600)
    assert registry.is_excluded(PEER_A)
    assert registry.excluded_peers() == [PEER_A]
    clock.advance(599.9)
    assert registry.is_excluded(PEER_A)
    clock.advance(0.1)
    assert not registry.is_excluded(PEER_A) and registry.exclusion(PEER_A) is None
    assert registry.excluded_peers() == []


def test_a_shorter_exclusion_does_not_cut_a_longer_one(registry: PeerRegistry) -> None:
    registry.exclude(PEER_A, "first", for_s=100)
    registry.exclude(PEER_A, "second", for_s=10)
    entry = registry.exclusion(PEER_A)
    assert entry is not None and entry.reason == "first"
    registry.exclude(PEER_A, "third", for_s=1000)
    entry = registry.exclusion(PEER_A)
    assert entry is not None and entry.reason == "third"
    registry.pardon(PEER_A)
    assert not registry.is_excluded(PEER_A)


def test_exclusion_outlives_the_peers_entry_and_is_bounded(clock: FakeClock) -> None:
    registry = PeerRegistry(SELF, clock=clock)
    registry.exclude(PEER_A, "never seen, still excluded")
    assert registry.get(PEER_A) is None and registry.is_excluded(PEER_A)
    for i in range(PeerRegistry.MAX_EXCLUSIONS + 5):
        registry.exclude(peer_name(i), "spam", for_s=1000 + i)
    assert len(registry.excluded_peers()) == PeerRegistry.MAX_EXCLUSIONS
    assert not registry.is_excluded(PEER_A)  # the one ending first made room


def test_a_bootstrap_peer_is_never_forgotten_only_backed_off(
    registry: PeerRegistry, clock: FakeClock
) -> None:
    addr = "/ip4/1.1.1.1/tcp/1"
    registry.learn(PEER_A, [addr])
    for _ in range(PeerRegistry.FORGET_AFTER_FAILED_DIALS * 2):
        registry.dial_started(PEER_A, [addr])
        assert registry.dial_ended(PEER_A, [addr], ok=False) is False
        clock.advance(1000)
    assert registry.get(PEER_A) is not None


# -- members are redialled for a while, not forgotten after ~30 s -------------------------------


def _fail_until_forgotten(
    registry: PeerRegistry, clock: FakeClock, peer_id: str, addr: str, step_s: float = 10.0
) -> float:
    """Dial ``peer_id`` whenever backoff allows, failing each time; the time it took for
    the registry to forget the peer."""
    started = clock.now
    for _ in range(10_000):
        if registry.dialable_addrs(peer_id):
            registry.dial_started(peer_id, [addr])
            if registry.dial_ended(peer_id, [addr], ok=False):
                return clock.now - started
        clock.advance(step_s)
    raise AssertionError("never forgotten")


def test_a_lost_member_is_redialled_for_redial_for_s_with_a_short_backoff(
    clock: FakeClock,
) -> None:
    registry = PeerRegistry(
        SELF,
        backoff_s=5,
        backoff_max_s=300,
        redial_for_s=600,
        redial_backoff_max_s=30,
        clock=clock,
    )
    addr = "/ip4/10.0.0.1/tcp/4001/p2p/" + PEER_A
    registry.accept_card(card(PEER_A, ttl_s=30, addrs=[addr]), PEER_A)
    registry.set_connected(PEER_A, False)
    waits = []
    took = 0.0
    while True:
        registry.dial_started(PEER_A, [addr])
        forgotten = registry.dial_ended(PEER_A, [addr], ok=False)
        backoff = registry.backoff(addr)
        assert backoff is not None
        waits.append(backoff.retry_at - clock.now)
        if forgotten:
            break
        clock.advance(waits[-1])
        took += waits[-1]
    assert waits[:5] == [5, 10, 20, 30, 30]  # capped at redial_backoff_max_s
    assert 600 <= took < 600 + 30  # kept for redial_for_s after it was last seen


def test_hearsay_is_still_forgotten_after_a_few_failed_dials(clock: FakeClock) -> None:
    registry = PeerRegistry(SELF, redial_for_s=600, redial_backoff_max_s=30, clock=clock)
    addr = "/ip4/1.1.1.1/tcp/1/p2p/" + PEER_A
    registry.learn_record(record(PEER_A, "/ip4/1.1.1.1/tcp/1"), SOURCE)
    assert _fail_until_forgotten(registry, clock, PEER_A, addr) < 600


def test_a_remembered_peer_is_dialled_at_its_remembered_addresses_then_forgotten(
    clock: FakeClock,
) -> None:
    registry = PeerRegistry(SELF, redial_for_s=120, redial_backoff_max_s=30, clock=clock)
    addr = "/ip4/127.0.0.1/tcp/4001/p2p/" + PEER_A
    assert registry.remember(PEER_A, [addr]) is True
    state = registry.get(PEER_A)
    assert state is not None and not state.hearsay and state.addrs == [addr]
    assert [s.peer_id for s in registry.to_dial(retry_after_s=10)] == [PEER_A]
    took = _fail_until_forgotten(registry, clock, PEER_A, addr)
    assert 120 <= took <= 150
    # a remembered peer that answers becomes an ordinary member with a card
    assert registry.remember(PEER_A, [addr]) is True
    registry.accept_card(card(PEER_A, addrs=["/ip4/127.0.0.1/tcp/5001/p2p/" + PEER_A]), PEER_A)
    state = registry.get(PEER_A)
    assert state is not None and state.addrs[0].endswith("/tcp/5001/p2p/" + PEER_A)
    assert addr in state.addrs  # the remembered address stays a fallback


def test_remembered_peers_may_push_out_hearsay_but_not_members(clock: FakeClock) -> None:
    registry = PeerRegistry(SELF, max_peers=2, clock=clock)
    registry.accept_card(card(PEER_A), PEER_A)
    registry.learn_record(record(PEER_B, "/ip4/1.1.1.1/tcp/1"), SOURCE)
    assert registry.remember(PEER_C, ["/ip4/127.0.0.1/tcp/1/p2p/" + PEER_C])
    assert {s.peer_id for s in registry.all()} == {PEER_A, PEER_C}
    assert registry.remember(peer_name(1), ["/ip4/127.0.0.1/tcp/2/p2p/" + peer_name(1)]) is False
