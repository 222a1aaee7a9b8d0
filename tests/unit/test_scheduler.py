"""Placement policy (node.scheduler.place): claims capped by evidence, readable reasons."""

from __future__ import annotations

import pytest

from node.errors import PlacementError
from node.scheduler import Candidate, Evidence, Policy, assess, place, short

SELF = "12D3KooWSelf000000000000000000000000000000000000000"
PEER_A = "12D3KooWAaaa000000000000000000000000000000000000000"
PEER_B = "12D3KooWBbbb000000000000000000000000000000000000000"
PEER_C = "12D3KooWCccc000000000000000000000000000000000000000"
STRANGER = "12D3KooWSsss000000000000000000000000000000000000000"


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
    done: int = 0,
    failed: int = 0,
    outstanding: int = 0,
    sustained: int | None = None,
    run_ms: float | None = None,
    excluded: str | None = None,
) -> Candidate:
    """A peer whose card claims ``running/capacity``, with ``done`` steps done for us."""
    evidence = Evidence(
        done=done,
        failed=failed,
        outstanding=outstanding,
        sustained=(1 if done else 0) if sustained is None else sustained,
        run_ms=run_ms,
    )
    return Candidate(node, False, version, running, capacity, rtt_ms, failures, evidence, excluded)


# -- local or remote -------------------------------------------------------------------------


def test_local_is_preferred_when_it_has_the_tool_and_is_not_busy() -> None:
    decision = place("text.upper", None, [remote(PEER_A, rtt_ms=1, done=9), local(running=3)])
    assert decision.node == SELF
    assert decision.local
    assert decision.reason == "local: this node offers text.upper 1.0.0"


def test_remote_when_the_local_node_lacks_the_tool() -> None:
    decision = place("text.upper", "1", [remote(PEER_A, running=1, rtt_ms=12.4, done=3)])
    assert decision.node == PEER_A
    assert not decision.local
    assert decision.reason.startswith("remote: this node does not offer it; ")
    assert short(PEER_A) in decision.reason
    assert "the only peer offering text.upper 1.0.0" in decision.reason
    assert "3 steps done for us, 0 failed" in decision.reason
    assert "load 1/3 (its card claims 1/4)" in decision.reason  # sustained 1 + slack 2
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


# -- claims are capped by evidence -------------------------------------------------------------


def test_a_stranger_claiming_a_huge_idle_capacity_loses_to_a_peer_with_a_record() -> None:
    """The hijack: a card saying 0/100000 from a peer that never ran a step for us."""
    honest = remote(PEER_B, running=1, capacity=2, rtt_ms=4, done=14, run_ms=12)
    stranger = remote(STRANGER, running=0, capacity=100_000, rtt_ms=1)
    decision = place("text.upper", None, [stranger, honest])
    assert decision.node == PEER_B
    assert "14 steps done for us, 0 failed" in decision.reason
    assert "runs take 12 ms" in decision.reason
    # the runner-up is named, with what placement believes of its claim
    assert f"next: peer {short(STRANGER)} (has not run a step for this node yet" in decision.reason
    assert "load 0/1 (its card claims 0/100000)" in decision.reason


def test_an_unknown_peers_claimed_capacity_is_capped_at_the_default() -> None:
    a = assess(remote(STRANGER, running=0, capacity=100_000), Policy())
    assert (a.running, a.capacity) == (0, 1)
    a = assess(remote(STRANGER, running=0, capacity=100_000), Policy(unknown_capacity=3))
    assert a.capacity == 3


def test_a_known_peers_capacity_is_what_it_sustained_plus_slack_at_most_its_claim() -> None:
    policy = Policy(capacity_slack=2)
    assert assess(remote(PEER_A, capacity=100, done=5, sustained=4), policy).capacity == 6
    assert assess(remote(PEER_A, capacity=3, done=5, sustained=4), policy).capacity == 3
    # a claim that lowers the peer's priority is believed: capacity 0 means full
    zero = assess(remote(PEER_A, capacity=0, done=5, sustained=4), policy)
    assert zero.capacity == 0 and zero.saturated


def test_load_counts_at_least_our_own_outstanding_steps() -> None:
    a = assess(remote(PEER_A, running=0, capacity=8, done=3, outstanding=2, sustained=2), Policy())
    assert a.running == 2  # the card said 0; we know of 2


def test_a_full_peer_with_a_record_lets_an_unknown_peer_have_the_step() -> None:
    """Evidence is earned: when every proven peer is full, a newcomer gets work."""
    busy = remote(PEER_B, capacity=8, done=5, sustained=1, outstanding=3)  # 3/3: full
    newcomer = remote(STRANGER, capacity=8)
    assert place("t", None, [busy, newcomer]).node == STRANGER


def test_recent_failures_dominate() -> None:
    candidates = [
        remote(PEER_A, failures=1, done=50, rtt_ms=1),
        remote(PEER_B, failures=0, done=1, running=1, rtt_ms=200),
    ]
    decision = place("t", None, candidates)
    assert decision.node == PEER_B
    assert "best of 2 peers offering t" in decision.reason


def test_among_proven_peers_the_estimated_completion_time_decides() -> None:
    slow = remote(PEER_A, done=5, run_ms=900, rtt_ms=2)
    fast = remote(PEER_B, done=5, run_ms=20, rtt_ms=40)
    decision = place("t", None, [slow, fast])
    assert decision.node == PEER_B
    assert "est. 60 ms (runs take 20 ms)" in decision.reason


def test_load_raises_the_estimate() -> None:
    idle = remote(PEER_A, done=5, sustained=3, run_ms=100, rtt_ms=10)
    half = remote(PEER_B, done=5, sustained=3, run_ms=100, rtt_ms=10, outstanding=2)
    assert place("t", None, [half, idle]).node == PEER_A
    # capacity: min(its claim 4, sustained 3 + slack 2)
    assert assess(half, Policy()).est_ms == pytest.approx(10 + 100 * (1 + 2 / 4))


def test_unknown_rtt_and_run_time_use_the_policy_defaults() -> None:
    policy = Policy(default_rtt_ms=50, default_run_ms=100)
    assert assess(remote(PEER_A), policy).est_ms == pytest.approx(150)
    assert place("t", None, [remote(PEER_A), remote(PEER_B, rtt_ms=60)]).node == PEER_A
    assert place("t", None, [remote(PEER_A), remote(PEER_B, rtt_ms=40)]).node == PEER_B


def test_ties_are_broken_by_peer_id() -> None:
    candidates = [remote(PEER_C), remote(PEER_A), remote(PEER_B)]
    assert place("t", None, candidates).node == PEER_A
    assert place("t", None, list(reversed(candidates))).node == PEER_A


def test_reason_mentions_recent_failures() -> None:
    decision = place("t", None, [remote(PEER_A, failures=2, done=4, failed=2)])
    assert "2 recent failures" in decision.reason
    assert "4 steps done for us, 2 failed" in decision.reason


# -- exclusion ---------------------------------------------------------------------------------


def test_excluded_peers_are_skipped() -> None:
    candidates = [
        remote(PEER_A, done=99, rtt_ms=1, excluded="broke the protocol"),
        remote(PEER_B),
    ]
    assert place("t", None, candidates).node == PEER_B


def test_an_excluded_previous_node_is_not_asked_again() -> None:
    candidates = [remote(PEER_A, excluded="invalid result"), remote(PEER_B)]
    decision = place("t", None, candidates, previous=PEER_A)
    assert decision.node == PEER_B and not decision.reason.startswith("re-attach")


def test_only_excluded_peers_left_is_a_placement_error_that_says_why() -> None:
    candidates = [remote(PEER_A, excluded="its result failed the output schema (for 590 s more)")]
    with pytest.raises(PlacementError) as info:
        place("text.upper", None, candidates)
    text = str(info.value)
    assert "no node can run tool 'text.upper' now" in text
    assert f"peer {short(PEER_A)} is excluded: its result failed the output schema" in text


# -- attempts and errors -----------------------------------------------------------------------


def test_nodes_already_tried_are_skipped() -> None:
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


def test_all_tried_is_a_placement_error_naming_the_tool_and_the_tried_nodes() -> None:
    candidates = [local(), remote(PEER_A)]
    with pytest.raises(PlacementError) as info:
        place("math.add", "1", candidates, exclude=[SELF, PEER_A])
    text = str(info.value)
    assert "no node left to run tool 'math.add@1'" in text
    assert short(SELF) in text and short(PEER_A) in text


def test_short_peer_ids() -> None:
    assert short("abc") == "abc"
    assert short(PEER_A) == f"{PEER_A[:8]}…{PEER_A[-6:]}"


def test_previous_node_is_asked_again_first() -> None:
    peers = [
        Candidate("12D3KooWPeerAAAAAAAAAAAAAAAAAAAA", False, "1.0.0", running=5, capacity=1),
        Candidate("12D3KooWPeerBBBBBBBBBBBBBBBBBBBB", False, "1.0.0", running=0, capacity=4),
        Candidate("12D3KooWLocalLLLLLLLLLLLLLLLLLLL", True, "1.0.0"),
    ]
    d = place("util.sleep", None, peers, previous="12D3KooWPeerAAAAAAAAAAAAAAAAAAAA")
    assert d.node == "12D3KooWPeerAAAAAAAAAAAAAAAAAAAA" and not d.local
    assert d.reason.startswith("re-attach:")
    # a previous node already tried, or vanished, is ignored
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


def test_an_excluded_peer_already_tried_is_named_with_its_reason() -> None:
    candidates = [remote(PEER_A, excluded="answered about another handoff")]
    with pytest.raises(PlacementError) as info:
        place("t", None, candidates, exclude=[PEER_A])
    text = str(info.value)
    assert f"(tried: {short(PEER_A)})" in text
    assert "is excluded: answered about another handoff" in text


# -- spreading: a step goes where a slot is free, or waits for one -----------------------------


def test_every_proven_peer_full_with_our_steps_there_is_a_busy_decision() -> None:
    full_a = remote(PEER_A, capacity=2, done=5, sustained=2, outstanding=2)
    full_b = remote(PEER_B, capacity=6, done=5, sustained=6, outstanding=6)
    decision = place("util.sleep", None, [full_b, full_a])
    assert decision.busy and not decision.local
    assert decision.reason == (
        f"all providers of util.sleep busy ({short(PEER_A)}: 2/2, {short(PEER_B)}: 6/6)"
    )
    assert [s.note for s in decision.candidates] == ["busy", "busy"]


def test_a_free_slot_anywhere_is_taken_before_waiting() -> None:
    full = remote(PEER_A, capacity=2, done=5, sustained=2, outstanding=2, run_ms=10)
    free = remote(PEER_B, capacity=6, done=5, sustained=6, outstanding=5, run_ms=500)
    decision = place("t", None, [full, free])
    assert (decision.node, decision.busy) == (PEER_B, False)
    # this node, busy: peers first; idle: it takes the step when every peer is full
    assert place("t", None, [full, local(running=4, capacity=4)]).busy
    assert place("t", None, [full, local(running=1, capacity=4)], prefer_local=False).local


def test_a_full_peer_is_asked_anyway_when_none_of_our_steps_runs_anywhere() -> None:
    """Its load is only a claim, and nothing of ours will free a slot: no wait (a busy answer
    from it is backpressure)."""
    claimed_full = remote(PEER_A, running=4, capacity=4, done=5, sustained=4)
    decision = place("t", None, [claimed_full])
    assert (decision.node, decision.busy) == (PEER_A, False)


def test_in_a_new_swarm_a_cards_claim_is_believed_beyond_the_unknown_capacity() -> None:
    """No peer has a record: rather than leave claimed room idle until a step comes back, a
    step goes to a peer with room by its card, up to that claim; then it waits."""
    a = remote(PEER_A, capacity=2, outstanding=1)
    b = remote(PEER_B, capacity=6, outstanding=1)
    decision = place("t", None, [a, b])
    assert not decision.busy and decision.node == PEER_A  # (a tie: the peer id decides)
    assert "believed up to its card's claim" in decision.reason
    decision = place("t", None, [remote(PEER_A, capacity=2, outstanding=2), b])
    assert decision.node == PEER_B
    full = [remote(PEER_A, capacity=2, outstanding=2), remote(PEER_B, capacity=6, outstanding=6)]
    assert place("t", None, full).busy


def test_a_peer_with_a_record_full_of_our_steps_is_waited_for_not_a_strangers_claim() -> None:
    honest = remote(PEER_A, capacity=8, done=9, sustained=2, outstanding=4)  # 4/4: full
    stranger = remote(STRANGER, capacity=100_000, outstanding=1)  # 1/1 trusted
    assert place("t", None, [honest, stranger]).busy


def test_a_peer_gets_at_most_max_per_peer_steps_at_once() -> None:
    big = remote(PEER_A, capacity=64, done=50, sustained=40)
    assert assess(big, Policy(max_per_peer=16)).capacity == 16
    assert assess(big, Policy()).capacity == 42


# -- the explanation of a decision -------------------------------------------------------------


def test_a_decision_keeps_its_candidates_and_their_scores_chosen_first() -> None:
    slow = remote(PEER_A, done=5, failed=1, run_ms=900.04, rtt_ms=2.26, outstanding=1)
    fast = remote(PEER_B, done=7, run_ms=20, rtt_ms=40, running=1, capacity=4)
    barred = remote(PEER_C, excluded="broke the protocol")
    decision = place("t", None, [slow, barred, fast, local(running=4, capacity=4)])
    assert decision.node == PEER_B
    first, second, here, excluded = decision.candidates
    assert (first.node, first.note, first.local) == (PEER_B, "chosen", False)
    assert (first.running, first.capacity, first.done, first.run_ms) == (1, 3, 7, 20)
    assert first.est_ms == pytest.approx(40 + 20 * (1 + 1 / 3), abs=0.1)
    assert (second.node, second.note, second.done, second.failed) == (PEER_A, "free", 5, 1)
    assert (second.run_ms, second.rtt_ms) == (900.0, 2.3)  # rounded
    assert (here.node, here.local, here.note, here.running, here.capacity) == (
        SELF,
        True,
        "busy",
        4,
        4,
    )
    assert here.est_ms is None
    assert (excluded.node, excluded.note) == (PEER_C, "excluded: broke the protocol")


def test_the_explanation_is_bounded() -> None:
    many = [remote(f"12D3KooWPeer{i:040d}", excluded="x" * 1000) for i in range(20)]
    decision = place("t", None, [*many, remote(PEER_A)])
    assert len(decision.candidates) == 8
    assert decision.candidates[0].node == PEER_A
    assert all(len(s.note) <= 200 for s in decision.candidates)


def test_tried_nodes_and_a_reattach_are_explained() -> None:
    candidates = [remote(PEER_A), remote(PEER_B)]
    tried = place("t", None, candidates, exclude=[PEER_A])
    assert [(s.node, s.note) for s in tried.candidates] == [(PEER_B, "chosen"), (PEER_A, "tried")]
    again = place("t", None, candidates, previous=PEER_B)
    assert again.reason.startswith("re-attach") and again.candidates[0].note == "chosen"
    assert again.candidates[0].node == PEER_B
