"""Placement: where a step runs, and why. A pure function of its inputs.

What a peer's card says about its load and capacity is a claim. :func:`place` believes a
claim only as far as this node's own evidence about that peer goes: a peer's capacity is at
most what it has sustained for us plus a small slack (a peer that never ran a step for us
gets ``unknown_capacity``), its load is at least the steps we have outstanding there, and a
peer with a record is preferred to one without. A card claiming ``0/100000`` buys nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

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
    # it has what the step needs installed already (a package step's requirement)
    warm: bool = False


@dataclass(frozen=True)
class Policy:
    """How far claims are believed (config ``placement``)."""

    unknown_capacity: int = 1
    capacity_slack: int = 2
    default_rtt_ms: float = 50.0
    default_run_ms: float = 100.0
    # the most steps this node hands one peer at once (``handoff.max_inflight_per_peer``: a
    # peer accepts no more from one peer by default); None: no such bound
    max_per_peer: int | None = None


MAX_EXPLAINED = 8  # candidates kept per decision
MAX_NOTE = 200  # characters of a candidate's note


@dataclass(frozen=True)
class Scored:
    """One candidate of a decision as placement saw it: what ``status --explain`` shows.

    ``running``/``capacity`` are what placement believed (a peer's claims capped by the
    evidence); ``done``/``failed``/``run_ms`` are this node's own measurements of the peer;
    ``est_ms`` the estimated completion time (None for this node). ``note`` says what became of
    it: ``chosen``, ``busy``, ``free``, ``tried`` or ``excluded: <why>``."""

    node: str
    local: bool
    running: int
    capacity: int
    note: str
    done: int = 0
    failed: int = 0
    recent_failures: int = 0
    run_ms: float | None = None
    rtt_ms: float | None = None
    est_ms: float | None = None


@dataclass(frozen=True)
class Decision:
    """Where a step runs and why. ``busy``: every provider is full, and some of them run this
    node's steps (each that ends frees a slot): the step should wait instead of running on
    ``node``. ``candidates``: every node considered (at most :data:`MAX_EXPLAINED`), the
    chosen one first."""

    node: str
    local: bool
    reason: str
    busy: bool = False
    candidates: tuple[Scored, ...] = field(default=(), compare=False)


def explanation(decision: Decision) -> dict[str, Any]:
    """``decision``'s candidates as JSON (what is journaled with the step, and what control's
    ``status`` with ``explain`` sends: docs/protocols.md, the ``placement`` of a step)."""
    return {"candidates": [asdict(s) for s in decision.candidates]}


@dataclass(frozen=True)
class _Assessed:
    """A peer as placement sees it once its claims are capped by evidence."""

    c: Candidate
    ev: Evidence
    running: int
    capacity: int
    est_ms: float
    claimed: int = 0  # the capacity its card claims (within ``Policy.max_per_peer``)

    @property
    def saturated(self) -> bool:
        return self.running >= self.capacity

    @property
    def full_by_claim(self) -> bool:
        return self.running >= self.claimed

    @property
    def proven(self) -> bool:
        return self.ev.done > 0

    def key(self) -> tuple[float | int | str, ...]:
        # failures dominate, then a free slot, then a record, then the estimated completion
        # time; the node id breaks ties deterministically
        return (
            self.c.recent_failures,
            int(self.saturated),
            int(not self.c.warm),  # (a package already installed there: no install)
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
    claimed = max(0, c.capacity)
    if policy.max_per_peer is not None and not c.local:
        claimed = min(claimed, policy.max_per_peer)
    capacity = min(claimed, bound)
    running = max(c.running, ev.outstanding)
    rtt = c.rtt_ms if c.rtt_ms is not None else policy.default_rtt_ms
    run = ev.run_ms if ev.run_ms is not None else policy.default_run_ms
    est = rtt + run * (1 + running / max(capacity, 1))
    return _Assessed(c, ev, running, capacity, est, claimed)


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


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_NOTE else text[: MAX_NOTE - 1] + "…"


def _scored(a: _Assessed, note: str) -> Scored:
    c = a.c
    return Scored(
        node=c.node,
        local=False,
        running=a.running,
        capacity=a.capacity,
        note=note,
        done=a.ev.done,
        failed=a.ev.failed,
        recent_failures=c.recent_failures,
        run_ms=None if a.ev.run_ms is None else round(a.ev.run_ms, 1),
        rtt_ms=None if c.rtt_ms is None else round(c.rtt_ms, 1),
        est_ms=round(a.est_ms, 1),
    )


def _explain(
    candidates: Sequence[Candidate],
    ranked: Sequence[_Assessed],
    exclude: Collection[str],
    chosen: str | None,
    policy: Policy,
) -> tuple[Scored, ...]:
    """Every candidate as placement saw it: the chosen one, the usable peers best first, this
    node, then those tried already and those excluded; at most :data:`MAX_EXPLAINED`."""
    by_node = {a.c.node: a for a in ranked}
    first: list[Scored] = []
    rest: list[Scored] = []
    for a in ranked:
        note = "chosen" if a.c.node == chosen else "busy" if a.saturated else "free"
        (first if note == "chosen" else rest).append(_scored(a, note))
    tail: list[Scored] = []
    for c in candidates:
        if c.node in by_node:
            continue
        if c.excluded is not None or c.node in exclude:
            a = assess(c, policy)
            note = f"excluded: {c.excluded}" if c.excluded is not None else "tried"
            tail.append(_scored(a, _bounded(note)) if not c.local else _here(c, note))
            continue
        if c.local:
            busy = c.running >= max(c.capacity, 1)
            note = "chosen" if c.node == chosen else "busy" if busy else "free"
            (first if note == "chosen" else rest).append(_here(c, note))
            continue
        a = assess(c, policy)  # (a usable peer not ranked: placement stopped before)
        (first if c.node == chosen else rest).append(
            _scored(a, "chosen" if c.node == chosen else "busy" if a.saturated else "free")
        )
    return tuple((first + rest + tail)[:MAX_EXPLAINED])


def _here(c: Candidate, note: str) -> Scored:
    return Scored(c.node, True, c.running, c.capacity, _bounded(note))


def _busy_loads(ranked: Sequence[_Assessed], local: Candidate | None) -> str:
    # (in peer id order: the reason stays the same while the loads do)
    by_id = sorted(ranked, key=lambda a: a.c.node)
    loads = [f"{short(a.c.node)}: {a.running}/{a.capacity}" for a in by_id[:4]]
    if len(ranked) > 4:
        loads.append(f"{len(ranked) - 4} more")
    if local is not None:
        loads.insert(0, f"this node: {local.running}/{local.capacity}")
    return ", ".join(loads)


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

    A step goes only where a slot is free, which spreads a fan-out over the providers in
    proportion to their capacity and speed. When every usable node is full (its load at the
    capacity placement believes) and a peer with a record runs this node's steps, the
    decision is ``busy``: the step should wait for a slot to free rather than queue behind
    one node. If none of them has a record yet (a new swarm), a peer's card is believed up
    to its claimed capacity (within ``Policy.max_per_peer``) rather than leave the claimed
    room idle until a step comes back; full even by their claims, the step waits likewise.
    With none of this node's steps running anywhere (nothing of ours will free a slot; the
    loads are claims), the best node is chosen anyway: a busy answer is backpressure.
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
    remote = sorted((assess(c, policy) for c in usable if not c.local), key=_Assessed.key)

    def decided(node: str, local: bool, reason: str, busy: bool = False) -> Decision:
        chosen = None if busy else node
        why = _explain(candidates, remote, exclude, chosen, policy)
        return Decision(node, local, reason, busy, why)

    again = next((c for c in usable if c.node == previous), None)
    if again is not None:
        where = "this node" if again.local else f"peer {short(again.node)}"
        return decided(
            again.node,
            again.local,
            f"re-attach: the step was running on {where} when the workflow was interrupted; "
            "asked again there (same handoff id: a finished run returns its stored result)",
        )
    local = next((c for c in usable if c.local), None)
    local_free = local is not None and local.running < max(local.capacity, 1)
    if local is not None and not local.warm and any(a.c.warm and not a.saturated for a in remote):
        prefer_local = False  # a free peer has the package installed: no install here
    if local is not None and prefer_local and local_free:
        return decided(local.node, True, f"local: this node offers {tool} {local.version}")
    if not remote:
        assert local is not None
        if local_free:
            return decided(local.node, True, f"local: this node offers {tool} {local.version}")
        return decided(
            local.node,
            True,
            f"local: this node offers {tool} {local.version} (busy, but no peer offers it)",
        )
    best = remote[0]
    if best.saturated and local is not None and local_free:
        return decided(
            local.node,
            True,
            f"local: this node offers {tool} {local.version} (every peer offering it is busy)",
        )
    ours = any(a.ev.outstanding > 0 for a in remote) or (local is not None and local.running > 0)
    beyond = ""
    if best.saturated and not any(a.proven and a.ev.outstanding > 0 for a in remote):
        # no peer with a record will free a slot: believe the cards' claims (a new swarm)
        roomy = sorted((a for a in remote if not a.full_by_claim), key=_Assessed.key)
        if roomy:
            best = roomy[0]
            beyond = (
                "; every peer is at the load this node trusts it with and none has run a step "
                "for this node yet: believed up to its card's claim"
            )
            ours = False
    if best.saturated and ours:
        return decided(
            best.c.node,
            False,
            f"all providers of {tool} busy ({_busy_loads(remote, local)})",
            busy=True,
        )
    if local is None:
        why = "this node does not offer it"
    elif local_free and not local.warm and best.c.warm:
        why = "a peer has it installed already, this node has not"
    elif local_free:
        why = "peers first (prefer_local is off)"
    else:
        why = f"this node is busy ({local.running}/{local.capacity})"
    if len(remote) == 1:
        choice = f"the only peer offering {tool} {best.c.version}"
    else:
        choice = f"best of {len(remote)} peers offering {tool}"
    if exclude:
        choice += f", after {len(exclude)} failed attempt(s)"
    reason = f"remote: {why}; peer {short(best.c.node)} is {choice} ({', '.join(_details(best))})"
    nxt = next((a for a in remote if a is not best), None)
    if nxt is not None:
        reason += f"; next: peer {short(nxt.c.node)} ({', '.join(_details(nxt)[:3])})"
    return decided(best.c.node, False, reason + beyond)
