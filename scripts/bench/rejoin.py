"""How fast a restarted node is back in its swarm, on loopback.

    .venv/bin/python scripts/bench/rejoin.py               # 5 rounds of each case
    .venv/bin/python scripts/bench/rejoin.py --rounds 10

Real nodes in one trio run with one local Ray (1 CPU): ``hub`` (no tools) and ``util`` (the
only node with util tools, port 0). ``util`` joins once through ``--bootstrap`` (the
reference: a first join), then is stopped and restarted from its home with no bootstrap:

- ``same port``: it comes back on its remembered port;
- ``port taken``: its port is held by another socket, so it listens on a new one and is
  found only because it redials the hub it remembers;
- ``without memory``: ``network.remember_port: false`` and ``discovery.peer_store_size: 0``
  (what a node did before it kept its place; port taken as above): bounded by ``--give-up``.

For each, the time from the start of the restart to: ``util`` ready; the hub connected to
it with its new card; a one-step util workflow submitted to the hub finished on it.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402

from node.config import NodeConfig  # noqa: E402
from node.daemon import Node, start_ray, stop_ray  # noqa: E402
from node.home import Home  # noqa: E402
from node.swarmkey import SwarmKey  # noqa: E402
from workflows.dsl import parse_workflow  # noqa: E402
from workflows.status import WorkflowStatus  # noqa: E402

ECHO = """
id: echo
steps:
  - name: e
    tool: util.echo
    inputs: [{name: value, value: 7}]
"""
NO_MEMORY = {"network": {"remember_port": False}, "discovery": {"peer_store_size": 0}}


def make(root: Path, name: str, tools: str, bootstrap: list[str], extra: dict[str, Any]) -> Node:
    home = Home(root / name)
    home.init_identity()
    key = root / "swarm.key"
    if not key.exists():
        SwarmKey.generate().write_new(key)
    raw: dict[str, Any] = {
        "tools": tools,
        "network": {"bootstrap": bootstrap, "dial_timeout_s": 3, "shutdown_timeout_s": 2},
        "swarm": {"key_file": str(key)},
        "log_level": "WARNING",
    }
    for section, values in extra.items():
        raw.setdefault(section, {}).update(values)
    return Node(NodeConfig.model_validate(raw), home, cpus=1)


async def start(nursery: trio.Nursery, node: Node) -> trio.CancelScope:
    scope = trio.CancelScope()

    async def run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await node.run(task_status=task_status)

    await nursery.start(run)
    return scope


async def until(predicate: Any, bound_s: float) -> bool:
    with trio.move_on_after(bound_s):
        while not predicate():
            await trio.sleep(0.01)
        return True
    return False


async def rejoin(
    nursery: trio.Nursery,
    root: Path,
    hub: Node,
    util: Node,
    scope: trio.CancelScope,
    *,
    take_port: bool,
    extra: dict[str, Any],
    give_up_s: float,
    wid: str,
) -> tuple[Node, trio.CancelScope, list[float | None]]:
    """Stop ``util``, restart it; the times (s) to ready, to connected, to routed."""
    (old_addr,) = util.host.transport_addrs()
    scope.cancel()
    await until(lambda: not util.home.runtime_file.exists(), 30)
    await until(lambda: not hub.host.is_connected(util.peer_id), 30)
    squatter = None
    if take_port:
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", int(old_addr.rsplit("/", 1)[1])))
        squatter.listen()
    try:
        began, mono = trio.current_time(), time.monotonic()
        again = make(root, "util", "util", [], extra)
        new_scope = await start(nursery, again)
        ready = trio.current_time() - began

        def back() -> bool:
            state = hub.registry.get(again.peer_id)
            return (
                hub.host.is_connected(again.peer_id)
                and state is not None
                and (state.last_seen or 0) > mono
                and hub.registry.has_fresh_card(again.peer_id)
            )

        if not await until(back, give_up_s):
            return again, new_scope, [ready, None, None]
        connected = trio.current_time() - began
        await hub.workflows.submit(parse_workflow(ECHO), {}, wid)
        with trio.move_on_after(give_up_s):
            view = await hub.workflows.wait(wid)
            if view.status is WorkflowStatus.SUCCESSFUL:
                return again, new_scope, [ready, connected, trio.current_time() - began]
        return again, new_scope, [ready, connected, None]
    finally:
        if squatter is not None:
            squatter.close()


def _fmt(values: list[float | None]) -> str:
    done = [v for v in values if v is not None]
    if not done:
        return "never".rjust(18)
    missing = len(values) - len(done)
    text = f"{statistics.median(done):6.2f} ({min(done):.2f}-{max(done):.2f})"
    return text + (f" +{missing} never" if missing else "")


async def main(rounds: int, give_up_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="hm-rejoin-") as tmp:
        root = Path(tmp)
        results: dict[str, list[list[float | None]]] = {}
        async with trio.open_nursery() as nursery:
            hub = make(root, "hub", "none", [], {})
            await start(nursery, hub)
            began = trio.current_time()
            util = make(root, "util", "util", hub.host.addrs(), {})
            scope = await start(nursery, util)
            ready = trio.current_time() - began
            await until(lambda: hub.registry.has_fresh_card(util.peer_id), 30)
            connected = trio.current_time() - began
            await hub.workflows.submit(parse_workflow(ECHO), {}, "first")
            await hub.workflows.wait("first")
            results["first join (bootstrap)"] = [[ready, connected, trio.current_time() - began]]
            n = 0
            for case, take, extra, count in (
                ("same port", False, {}, rounds),
                ("port taken", True, {}, rounds),
                ("without memory, port taken", True, NO_MEMORY, 1),
            ):
                for _ in range(count):
                    n += 1
                    util, scope, times = await rejoin(
                        nursery,
                        root,
                        hub,
                        util,
                        scope,
                        take_port=take,
                        extra=extra,
                        give_up_s=give_up_s,
                        wid=f"echo-{n}",
                    )
                    results.setdefault(case, []).append(times)
                    print(f"  {case}: {times}", flush=True)
            nursery.cancel_scope.cancel()
    print(f"\nrestart -> (median (min-max) seconds over rounds; give up after {give_up_s:g} s)")
    print(f"{'case':<28}{'ready':>20}{'hub connected':>26}{'routed':>26}")
    for case, rows in results.items():
        cols = [_fmt([r[i] for r in rows]) for i in range(3)]
        print(f"{case:<28}{cols[0]:>20}{cols[1]:>26}{cols[2]:>26}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--give-up", type=float, default=30.0, dest="give_up_s")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from node.config import RayConfig

    start_ray(RayConfig(num_cpus=1))
    try:
        trio.run(main, args.rounds, args.give_up_s)
    finally:
        stop_ray()
