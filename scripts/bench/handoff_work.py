"""What a handoff costs the event loop, counted: the same chain run locally and routed.

    .venv/bin/python scripts/bench/handoff_work.py                 # 3 x 50 steps each
    .venv/bin/python scripts/bench/handoff_work.py --runs 5 --steps 100

Times on a shared 2-core machine drift by 2x within minutes; counts do not. One process, one
local Ray, and in one trio run two nodes as routing.py makes them: ``a`` with the tools and
``c`` without, bootstrapped to ``a``. A chain of ``math.add`` runs on ``a`` (local) and through
``c`` (every step handed to ``a``: routed), after a warm-up of each. For each, per step:

* Python function calls on the event loop's thread (cProfile: it profiles that thread only);
* trio task steps (a trio Instrument), with the tasks that took the most;
* yamux frames written, by kind (node.p2p.yamux_frames's writer, counted);
* event-loop CPU and wall milliseconds, from a separate pass with nothing counting
  (``time.thread_time``, ``time.perf_counter``; load on the machine inflates both).

All nodes share the loop here, so a routed step's figures are both nodes' work together.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

# scripts/bench is on sys.path as the running script's folder (it is not a package).
from _routed_driver import (
    LIFTED,
    NodeFactory,
    chain_yaml,
    run_checked,
    setup_process,
    start_pair,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of the chain per place")
    parser.add_argument("--steps", type=int, default=50, help="steps of the chain")
    parser.add_argument("--top", type=int, default=8, help="tasks listed per place")
    parser.add_argument(
        "--pstats", type=Path, help="write each place's cProfile stats to DIR/<place>.pstats"
    )
    args = parser.parse_args()
    setup_process()

    import ray
    import trio

    from node.config import NodeConfig
    from node.daemon import Node
    from node.home import Home
    from node.p2p import yamux_frames
    from node.swarmkey import SwarmKey
    from workflows.dsl import parse_workflow

    frames: collections.Counter[str] = collections.Counter()
    send = yamux_frames._send

    async def counted(conn: Any, data: bytes) -> None:
        kind, flags = yamux_frames.frame_names(data)
        frames[kind if flags == "0" else f"{kind} {flags}"] += 1
        await send(conn, data)

    yamux_frames._send = counted

    class TaskSteps(trio.abc.Instrument):
        def __init__(self) -> None:
            self.steps: collections.Counter[str] = collections.Counter()

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.steps[task.name.split(".<locals>")[0].rsplit(".", 2)[-2:][-1]] += 1

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    tmp = Path(tempfile.mkdtemp(prefix="hivemesh-handoff-work-"))
    make = NodeFactory(tmp, Node, Home, NodeConfig, SwarmKey, True, 1, handoff=dict(LIFTED))
    spec = parse_workflow(chain_yaml(args.steps))
    total = args.runs * args.steps
    report: dict[str, dict[str, Any]] = {}

    async def measure(place: str, target: Any, ran_on: list[str]) -> dict[str, Any]:
        cpu, wall = time.thread_time(), time.perf_counter()
        for _ in range(args.runs):  # timed, with nothing counting
            await run_checked(target, spec, args.steps, args.steps, ran_on)
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        frames.clear()
        instrument = TaskSteps()
        profile = cProfile.Profile()
        trio.lowlevel.add_instrument(instrument)
        profile.enable()
        try:
            for _ in range(args.runs):
                await run_checked(target, spec, args.steps, args.steps, ran_on)
        finally:
            profile.disable()
            trio.lowlevel.remove_instrument(instrument)
        calls = sum(v[1] for v in pstats.Stats(profile).stats.values())  # type: ignore[attr-defined]
        if args.pstats is not None:
            args.pstats.mkdir(parents=True, exist_ok=True)
            profile.dump_stats(args.pstats / f"{place}.pstats")
        return {
            "calls": calls / total,
            "task steps": sum(instrument.steps.values()) / total,
            "tasks": {k: v / total for k, v in instrument.steps.most_common(args.top)},
            "frames": {k: v / total for k, v in sorted(frames.items())},
            "loop cpu ms": cpu / total * 1000,
            "wall ms": wall / total * 1000,
        }

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            a, c = await start_pair(nursery, make)
            for target in (a, c):  # warm-up: Ray workers, connections, caches
                await run_checked(target, spec, args.steps, args.steps, [a.peer_id])
            report["local"] = await measure("local", a, [a.peer_id])
            report["routed"] = await measure("routed", c, [a.peer_id])
            nursery.cancel_scope.cancel()

    trio.run(run)
    print(f"per step of a {args.steps}-step chain, {args.runs} runs each (in-process, c -> a)")
    print(f"{'':28s}{'local':>10s}{'routed':>10s}")
    for key in ("calls", "task steps", "loop cpu ms", "wall ms"):
        print(f"{key:28s}{report['local'][key]:10.1f}{report['routed'][key]:10.1f}")
    kinds = sorted(set(report["local"]["frames"]) | set(report["routed"]["frames"]))
    for kind in kinds:
        local = report["local"]["frames"].get(kind, 0.0)
        routed = report["routed"]["frames"].get(kind, 0.0)
        print(f"{'frames: ' + kind:28s}{local:10.2f}{routed:10.2f}")
    for place in ("local", "routed"):
        print(f"task steps by task, {place}:")
        for name, steps in report[place]["tasks"].items():
            print(f"    {steps:7.1f} {name}")


if __name__ == "__main__":
    main()
