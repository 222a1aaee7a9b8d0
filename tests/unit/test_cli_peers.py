"""What ``hivemesh peers`` prints for a peer: its evidence and its exclusion."""

from __future__ import annotations

import time

from node.cli import peer_lines
from protocols import control

PEER = "12D3KooWAaaa000000000000000000000000000000000000000"
SOURCE = "12D3KooWSrce000000000000000000000000000000000000000"


def test_a_peer_with_a_record() -> None:
    entry = control.PeerEntry(
        peer_id=PEER,
        addrs=[f"/ip4/127.0.0.1/tcp/4001/p2p/{PEER}"],
        tools=["text.upper"],
        connected=True,
        load="1/4",
        evidence=control.PeerEvidence(
            done=14,
            failed=1,
            recent_failures=0,
            outstanding=2,
            sustained=3,
            mean_run_ms=12.4,
            rtt_ms=3.2,
        ),
    )
    assert peer_lines(entry) == [
        f"{PEER}  (connected)",
        f"    addr:     /ip4/127.0.0.1/tcp/4001/p2p/{PEER}",
        "    tools:    text.upper",
        "    card:     load 1/4 (its own claim)",
        "    record:   14 step(s) done for this node, 1 failed, mean run 12 ms, rtt 3 ms, "
        "2 running now",
    ]


def test_an_excluded_peer_heard_of_from_another() -> None:
    until = time.time() + 595
    entry = control.PeerEntry(
        peer_id=PEER,
        addrs=[],
        tools=[],
        connected=False,
        learned_from=SOURCE,
        evidence=control.PeerEvidence(
            done=0, failed=1, recent_failures=1, outstanding=0, sustained=0
        ),
        excluded=control.PeerExclusion(
            reason="its result for text.upper fails the tool's output schema",
            remaining_s=595,
            until=until,
        ),
    )
    lines = peer_lines(entry)
    assert lines[2] == "    heard of: from peer 12D3KooW…000000 only"
    assert lines[3] == "    record:   0 step(s) done for this node, 1 failed"
    clock = time.strftime("%H:%M:%S", time.localtime(until))
    assert lines[4] == (
        f"    EXCLUDED: for 9 min 55 s more (until {clock}): its result for text.upper "
        "fails the tool's output schema"
    )


def test_a_peer_that_never_ran_a_step() -> None:
    entry = control.PeerEntry(
        peer_id=PEER,
        addrs=[],
        tools=[],
        connected=False,
        evidence=control.PeerEvidence(
            done=0, failed=0, recent_failures=0, outstanding=0, sustained=0
        ),
    )
    assert peer_lines(entry)[-1] == "    record:   has not run a step for this node yet"
