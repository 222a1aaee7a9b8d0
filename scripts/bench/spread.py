"""How a fan-out spreads over several providers: steps per provider, busy rejections, time.

    nice .venv/bin/python scripts/bench/spread.py                      # 200 steps, 2 rounds
    nice .venv/bin/python scripts/bench/spread.py --steps 400 --sleep 0.05 --rounds 3
    nice .venv/bin/python scripts/bench/spread.py --providers 1,3,2 --json .bench/spread.json

One process, one local Ray (127.0.0.1, ``--ray-cpus``; the steps sleep, so Ray's CPUs are
accounting, not load), and in one trio run (as tests/integration/harness.py does) a node
``c`` without tools and one provider of the ``util`` tools per entry of ``--providers``,
given that many CPUs (a node's capacity is two steps per CPU; its card says so). ``c`` is
bootstrapped to every provider. Each round submits a ``--steps``-step fan-out of
``util.sleep`` (``--sleep`` seconds each, no dependencies) to ``c`` and prints, per provider:
its capacity, the steps it ran, its share against its share of the capacity, and the most of
``c``'s steps it had at once; then the busy rejections (``quota_exceeded``/``overloaded``)
``c`` saw, steps that ran more than once, and the time the round took. The first round is
also the warm-up: providers are unproven then (placement believes ``unknown_peer_capacity``
of them until they have run steps for ``c``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any


def fanout_yaml(n: int, seconds: float) -> str:
    lines = ["id: spread", "steps:"]
    for i in range(n):
        lines += [
            f"  - name: s{i}",
            "    tool: util.sleep",
            f"    inputs: [{{name: seconds, value: {seconds}}}]",
        ]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--sleep", type=float, default=0.05, help="seconds each step sleeps")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--providers", default="1,3", help="CPUs of each provider (capacity: 2 per CPU)"
    )
    parser.add_argument("--ray-cpus", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


class Rejections(logging.Handler):
    """Counts the busy rejections the delegator logs (``asking again in``)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "asking again in" in record.getMessage():
            self.count += 1


async def _measure(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    import trio

    from node.config import NodeConfig
    from node.daemon import Node
    from node.home import Home
    from node.swarmkey import SwarmKey
    from workflows.dsl import parse_workflow
    from workflows.status import WorkflowStatus

    key_file = tmp / "swarm.key"
    SwarmKey.generate().write_new(key_file)

    def make(name: str, tools: str, cpus: int, bootstrap: list[str]) -> Node:
        home = Home(tmp / name)
        home.init_identity()
        raw: dict[str, Any] = {
            "tools": tools,
            "network": {"bootstrap": bootstrap},
            "discovery": {"refresh_interval_s": 0.5},
            "swarm": {"key_file": str(key_file)},
        }
        return Node(NodeConfig.model_validate(raw), home, cpus=cpus)

    rejections = Rejections()
    logging.getLogger("node.executor").addHandler(rejections)
    logging.getLogger("node.executor").setLevel(logging.INFO)
    logging.getLogger("node.executor").propagate = False
    cpus = [int(x) for x in args.providers.split(",")]
    from workflows.dsl import ParseLimits

    limits = ParseLimits(
        max_steps=100_000,
        max_bytes=64 * 1024 * 1024,
        max_nodes=10_000_000,
        max_expanded_bytes=256 * 1024 * 1024,
        timeout_s=600,
    )
    spec = parse_workflow(fanout_yaml(args.steps, args.sleep), limits=limits)
    rounds: list[dict[str, Any]] = []
    async with trio.open_nursery() as nursery:
        providers = []
        for i, n in enumerate(cpus):
            p = make(f"p{i}", "util", n, [])
            await nursery.start(p.run)
            providers.append(p)
        c = make("c", "none", 1, [a for p in providers for a in p.host.addrs()[:1]])
        await nursery.start(c.run)
        with trio.fail_after(60):
            while not all(c.registry.has_fresh_card(p.peer_id) for p in providers):
                await trio.sleep(0.05)
        for r in range(args.rounds):
            peak = dict.fromkeys((p.peer_id for p in providers), 0)

            async def sample(peak: dict[str, int] = peak) -> None:
                while True:
                    for peer in peak:
                        state = c.registry.get(peer)
                        if state is not None:
                            peak[peer] = max(peak[peer], state.outstanding)
                    await trio.sleep(0.01)

            before = rejections.count
            jobs_before = {p.peer_id: p.handoff.started_jobs for p in providers}
            async with trio.open_nursery() as sampler:
                sampler.start_soon(sample)
                started = time.perf_counter()
                wid, _ = await c.workflows.submit(spec, {}, f"spread-{r}")
                with trio.fail_after(600):
                    view = await c.workflows.wait(wid)
                elapsed = time.perf_counter() - started
                sampler.cancel_scope.cancel()
            if view.status is not WorkflowStatus.SUCCESSFUL:
                raise RuntimeError(f"round {r}: {view.status} {view.error}")
            ran = Counter(s.node for s in view.steps)
            total_cap = sum(p.local_capacity for p in providers)
            rows = []
            for p in providers:
                rows.append(
                    {
                        "peer": p.peer_id[-6:],
                        "capacity": p.local_capacity,
                        "steps": ran.get(p.peer_id, 0),
                        "share": round(ran.get(p.peer_id, 0) / args.steps, 3),
                        "capacity_share": round(p.local_capacity / total_cap, 3),
                        "peak_outstanding": peak[p.peer_id],
                        "jobs": p.handoff.started_jobs - jobs_before[p.peer_id],
                    }
                )
            rounds.append(
                {
                    "round": r,
                    "seconds": round(elapsed, 2),
                    "providers": rows,
                    "busy_rejections": rejections.count - before,
                    "reruns": sum(s.attempts - 1 for s in view.steps if s.attempts > 1),
                    "ideal_s": round(args.steps * args.sleep / total_cap, 2),
                }
            )
            _print_round(rounds[-1])
        nursery.cancel_scope.cancel()
    return {
        "steps": args.steps,
        "sleep": args.sleep,
        "providers_cpus": cpus,
        "rounds": rounds,
    }


def _print_round(r: dict[str, Any]) -> None:
    print(
        f"round {r['round']}: {r['seconds']} s (ideal at full capacity {r['ideal_s']} s), "
        f"busy rejections {r['busy_rejections']}, reruns {r['reruns']}"
    )
    head = ("cap", 4), ("steps", 6), ("share", 6), ("of cap", 7), ("peak", 5), ("jobs", 5)
    print(f"  {'peer':8} " + " ".join(f"{name:>{width}}" for name, width in head))
    for p in r["providers"]:
        print(
            f"  {p['peer']:8} {p['capacity']:>4} {p['steps']:>6} {p['share']:>6} "
            f"{p['capacity_share']:>7} {p['peak_outstanding']:>5} {p['jobs']:>5}"
        )
    sys.stdout.flush()


def main() -> None:
    args = parse_args()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway loopback Ray
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    import trio

    from node.config import NodeConfig
    from node.daemon import start_ray, stop_ray

    start_ray(NodeConfig.model_validate({"ray": {"num_cpus": args.ray_cpus}}).ray)
    try:
        with tempfile.TemporaryDirectory(prefix="hm-bench-spread") as tmp:
            result = trio.run(_measure, Path(tmp), args)
    finally:
        stop_ray()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
