"""Placement: where a step runs, and why. A pure function of its inputs."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from node.errors import PlacementError


@dataclass(frozen=True)
class Candidate:
    node: str  # peer id
    local: bool
    version: str
    running: int = 0
    capacity: int = 1
    rtt_ms: float | None = None
    recent_failures: int = 0


@dataclass(frozen=True)
class Decision:
    node: str
    local: bool
    reason: str


def short(peer_id: str) -> str:
    return peer_id if len(peer_id) <= 16 else f"{peer_id[:8]}…{peer_id[-6:]}"


def _tool_label(tool: str, version: str | None) -> str:
    return f"{tool}@{version}" if version else tool


def _score(c: Candidate) -> tuple[float, ...]:
    load = c.running / max(c.capacity, 1)
    rtt = c.rtt_ms if c.rtt_ms is not None else 50.0
    # failures dominate, then load, then latency; node id breaks ties deterministically
    return (float(c.recent_failures), round(load, 3), rtt)


def place(
    tool: str,
    version: str | None,
    candidates: Sequence[Candidate],
    *,
    exclude: Collection[str] = (),
    prefer_local: bool = True,
    previous: str | None = None,
) -> Decision:
    """Choose a node for a step that needs ``tool`` (``version`` is the requirement).

    ``candidates`` are the local node (if it has the tool) and peers whose fresh cards
    offer it. ``exclude`` lists nodes already tried for this step. ``previous`` is where
    the step was running before an interruption: it is asked again first, if still a
    candidate. Raises
    :class:`PlacementError`, naming the tool, when no candidate is left.
    """
    label = _tool_label(tool, version)
    usable = [c for c in candidates if c.node not in exclude]
    if not usable:
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
    remote = sorted((c for c in usable if not c.local), key=lambda c: (*_score(c), c.node))
    if not remote:
        assert local is not None
        return Decision(
            local.node,
            True,
            f"local: this node offers {tool} {local.version} (busy, but no peer offers it)",
        )
    best = remote[0]
    details = [f"load {best.running}/{best.capacity}"]
    if best.rtt_ms is not None:
        details.append(f"rtt {best.rtt_ms:.0f} ms")
    if best.recent_failures:
        details.append(f"{best.recent_failures} recent failures")
    if local is None:
        why = "this node does not offer it"
    else:
        why = f"this node is busy ({local.running}/{local.capacity})"
    if len(remote) == 1:
        choice = f"the only peer offering {tool} {best.version}"
    else:
        choice = f"best of {len(remote)} peers offering {tool}"
    if exclude:
        choice += f", after {len(exclude)} failed attempt(s)"
    return Decision(
        best.node,
        False,
        f"remote: {why}; peer {short(best.node)} is {choice} ({', '.join(details)})",
    )
