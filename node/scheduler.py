"""Placement: where a step runs, and why. A pure function of its inputs.

What a peer's card says about its load and capacity is a claim. :func:`place` believes a
claim only as far as this node's own evidence about that peer goes: a peer's capacity is at
most what it has sustained for us plus a small slack (a peer that never ran a step for us
gets ``unknown_capacity``), its load is at least the steps we have outstanding there, and a
peer with a record is preferred to one without. A card claiming ``0/100000`` buys nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from node.errors import PlacementError


@dataclass(frozen=True)
class Evidence:
    """What this node measured of a peer running its steps (never what the peer said)."""

    done: int = 0  # steps it completed for us with a valid result
    failed: int = 0  # steps it lost, broke or answered with an invalid result
    outstanding: int = 0  # our steps it has now
    sustained: int = 0  # the most of our steps it had at once when one of them succeeded
    run_ms: float | None = None  # observed run time of this tool there (offer → result)


@dataclass(frozen=True)
class Candidate:
    """A node that offers the tool. For the local node ``running``/``capacity`` are real;
    for a peer they are its card's claim and ``evidence`` is what we measured."""

    node: str  # peer id
    local: bool
    version: str
    running: int = 0
    capacity: int = 1
    rtt_ms: float | None = None
    recent_failures: int = 0
    evidence: Evidence | None = None
    excluded: str | None = None  # why the node may not be used now (it is skipped)


@dataclass(frozen=True)
class Policy:
    """How far claims are believed (config ``placement``)."""

    unknown_capacity: int = 1
    capacity_slack: int = 2
    default_rtt_ms: float = 50.0
    default_run_ms: float = 100.0


@dataclass(frozen=True)
class Decision:
    node: str
    local: bool
    reason: str


@dataclass(frozen=True)
class _Assessed:
    """A peer as placement sees it once its claims are capped by evidence."""

    c: Candidate
    ev: Evidence
    running: int
    capacity: int
    est_ms: float

    @property
    def saturated(self) -> bool:
        return self.running >= self.capacity

    @property
    def proven(self) -> bool:
        return self.ev.done > 0

    def key(self) -> tuple[float | int | str, ...]:
        # failures dominate, then a free slot, then a record, then the estimated completion
        # time; the node id breaks ties deterministically
        return (
            self.c.recent_failures,
            int(self.saturated),
            int(not self.proven),
            round(self.est_ms, 1),
            self.c.node,
        )


def short(peer_id: str) -> str:
    return peer_id if len(peer_id) <= 16 else f"{peer_id[:8]}…{peer_id[-6:]}"


def _tool_label(tool: str, version: str | None) -> str:
    return f"{tool}@{version}" if version else tool


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def assess(c: Candidate, policy: Policy) -> _Assessed:
    """Cap a peer's claims by the evidence: its effective load, capacity and estimate."""
    ev = c.evidence or Evidence()
    if ev.done > 0:
        bound = max(policy.unknown_capacity, ev.sustained + policy.capacity_slack)
    else:
        bound = policy.unknown_capacity
    capacity = max(0, min(c.capacity, bound))
    running = max(c.running, ev.outstanding)
    rtt = c.rtt_ms if c.rtt_ms is not None else policy.default_rtt_ms
    run = ev.run_ms if ev.run_ms is not None else policy.default_run_ms
    est = rtt + run * (1 + running / max(capacity, 1))
    return _Assessed(c, ev, running, capacity, est)


def _record(a: _Assessed) -> str:
    if not a.proven:
        return "has not run a step for this node yet"
    return f"{_plural(a.ev.done, 'step')} done for us, {a.ev.failed} failed"


def _details(a: _Assessed) -> list[str]:
    c = a.c
    out = [_record(a)]
    if a.ev.run_ms is not None:
        out.append(f"est. {a.est_ms:.0f} ms (runs take {a.ev.run_ms:.0f} ms)")
    else:
        out.append(f"est. {a.est_ms:.0f} ms")
    load = f"load {a.running}/{a.capacity}"
    if (c.running, c.capacity) != (a.running, a.capacity):
        load += f" (its card claims {c.running}/{c.capacity})"
    out.append(load)
    if c.rtt_ms is not None:
        out.append(f"rtt {c.rtt_ms:.0f} ms")
    if c.recent_failures:
        out.append(f"{c.recent_failures} recent failures")
    return out


def place(
    tool: str,
    version: str | None,
    candidates: Sequence[Candidate],
    *,
    exclude: Collection[str] = (),
    prefer_local: bool = True,
    previous: str | None = None,
    policy: Policy | None = None,
) -> Decision:
    """Choose a node for a step that needs ``tool`` (``version`` is the requirement).

    ``candidates`` are the local node (if it has the tool) and peers whose fresh cards
    offer it; those with ``excluded`` set are skipped. ``exclude`` lists nodes already
    tried for this step. ``previous`` is where the step was running before an
    interruption: it is asked again first, if still a usable candidate. Raises
    :class:`PlacementError`, naming the tool, when no candidate is left.
    """
    policy = policy or Policy()
    label = _tool_label(tool, version)
    allowed = [c for c in candidates if c.excluded is None]
    usable = [c for c in allowed if c.node not in exclude]
    if not usable:
        barred = [c for c in candidates if c.excluded is not None]
        if barred:
            why = "; ".join(f"peer {short(c.node)} is excluded: {c.excluded}" for c in barred)
            tried = f" (tried: {', '.join(short(n) for n in sorted(exclude))})" if exclude else ""
            raise PlacementError(f"no node can run tool '{label}' now{tried}; {why}")
        if candidates:
            tried = ", ".join(short(n) for n in sorted(exclude))
            raise PlacementError(
                f"no node left to run tool '{label}': every node offering it failed ({tried})"
            )
        raise PlacementError(
            f"no node in the swarm offers tool '{label}' (not this node, no known peer)"
        )
    again = next((c for c in usable if c.node == previous), None)
    if again is not None:
        where = "this node" if again.local else f"peer {short(again.node)}"
        return Decision(
            again.node,
            again.local,
            f"re-attach: the step was running on {where} when the workflow was interrupted; "
            "asked again there (same handoff id: a finished run returns its stored result)",
        )
    local = next((c for c in usable if c.local), None)
    if local is not None and prefer_local and local.running < max(local.capacity, 1):
        return Decision(local.node, True, f"local: this node offers {tool} {local.version}")
    remote = sorted((assess(c, policy) for c in usable if not c.local), key=_Assessed.key)
    if not remote:
        assert local is not None
        return Decision(
            local.node,
            True,
            f"local: this node offers {tool} {local.version} (busy, but no peer offers it)",
        )
    best = remote[0]
    if local is None:
        why = "this node does not offer it"
    else:
        why = f"this node is busy ({local.running}/{local.capacity})"
    if len(remote) == 1:
        choice = f"the only peer offering {tool} {best.c.version}"
    else:
        choice = f"best of {len(remote)} peers offering {tool}"
    if exclude:
        choice += f", after {len(exclude)} failed attempt(s)"
    reason = f"remote: {why}; peer {short(best.c.node)} is {choice} ({', '.join(_details(best))})"
    if len(remote) > 1:
        nxt = remote[1]
        reason += f"; next: peer {short(nxt.c.node)} ({', '.join(_details(nxt)[:3])})"
    return Decision(best.c.node, False, reason)
