"""Real nodes (libp2p + journal + Ray) in one trio run, for integration tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from node.config import NodeConfig
from node.daemon import Node
from node.home import Home

FAST = {
    "discovery": {"refresh_interval_s": 0.2, "card_ttl_s": 10},
    "handoff": {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 2.0},
    "network": {"dial_timeout_s": 3, "request_timeout_s": 5, "shutdown_timeout_s": 2},
}


def make_node(
    tmp: Path, name: str, tools: str, bootstrap: list[str] | None = None, **overrides: Any
) -> Node:
    home = Home(tmp / name)
    home.init()
    raw: dict[str, Any] = {k: dict(v) for k, v in FAST.items()}
    raw["tools"] = tools
    raw["network"]["bootstrap"] = bootstrap or []
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return Node(NodeConfig.model_validate(raw), home, cpus=1)


async def launch(nursery: trio.Nursery, node: Node) -> trio.CancelScope:
    """Start ``node`` and return a scope that stops it (like killing it) when cancelled."""
    scope = trio.CancelScope()

    async def _run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await node.run(task_status=task_status)

    await nursery.start(_run)
    return scope


async def wait_until(predicate: Any, timeout_s: float = 10.0, what: str = "condition") -> None:
    with trio.move_on_after(timeout_s):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def launch_demo_swarm(nursery: trio.Nursery, tmp: Path) -> tuple[Node, Node, Node]:
    """The demo's shape: ``a`` (text tools), then ``b`` (math) and ``c`` (no tools), both
    bootstrapped to ``a`` only."""
    a = make_node(tmp, "a", "text")
    await launch(nursery, a)
    b = make_node(tmp, "b", "math", bootstrap=a.host.addrs())
    await launch(nursery, b)
    c = make_node(tmp, "c", "none", bootstrap=a.host.addrs())
    await launch(nursery, c)
    return a, b, c
