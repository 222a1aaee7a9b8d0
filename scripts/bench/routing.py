"""Routed steps against local ones, in one run: what a handoff costs a workflow.

    nice .venv/bin/python scripts/bench/routing.py                   # 3 rounds + 10,000 steps
    nice .venv/bin/python scripts/bench/routing.py --rounds 5 --big 2000 --json .bench/routing.json

One process, one local Ray (127.0.0.1, ``--ray-cpus``), and in one trio run (as
tests/integration/harness.py does) six nodes: ``p1``..``p4`` with the ``util`` and ``math``
tools, ``c1`` without tools that may hand steps only to ``p1`` (``handoff.delegate_to``), and
``c4`` without tools bootstrapped to all four. The same workflows — a ``--chain``-step chain
of ``math.add`` (default 50) and a ``--fanout``-step fan-out of ``math.add`` into one
``math.sum_list`` (default 200 + 1) — run on ``p1`` (local: the reference), through ``c1``
(routed, one provider) and through ``c4`` (routed, four providers), interleaved: each round
runs every workflow on the three, in an order that rotates round by round (this machine's
speed drifts, and it is shared). Then a ``--big``-step fan-out (default 10,000) runs once on
``p1`` and once through ``c4``.

Per step, the handoff overhead is the step's time as the delegator's engine records it
(``status``: placed -> result back) minus the time the tool took on the delegatee (its
runner's call: submitting the Ray task and getting its result); the same difference for a
local step (its runner's call on ``p1``) is the engine's own per-step cost, printed beside it.
In a fan-out a step's time also includes waiting for a free slot, so its overhead is mostly
queueing; the chain's is the latency a handoff adds.

The timed runs lift the per-peer quotas of every node (``_routed_driver.LIFTED``, as
routed.py does) unless ``--default-quotas``; every busy-peer rejection (``quota_exceeded``,
``overloaded``) the delegators saw and asked again after is counted and printed, and a
workflow that fails is reported, not hidden. Prints medians over rounds, the same-round
ratios, and the issue's targets, each marked met / MISSED.

By default all nodes share this process's trio loop: a routed step's two sides take turns on
one core, where two node processes would each have their own, so the figures are an upper
bound. With ``--processes`` every node runs in a process of its own (``_node_proc.py``, its
own trio loop and journal, as separate daemons on one machine), all joined to this run's Ray,
so local and routed steps still run on the same workers; each workflow is timed inside the
node it was submitted to, and the tools' run times come from the providers' processes.

    nice .venv/bin/python scripts/bench/routing.py --processes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# scripts/bench is on sys.path as the running script's folder (it is not a package).
from _common import BENCH_DIR, ROOT, STATE_DIR
from _routed_driver import (
    LIFTED,
    NodeFactory,
    chain_yaml,
    fanout_yaml,
    run_checked,
    setup_process,
)

LOG_DIR = STATE_DIR / "logs"
PLACES = ("local", "routed x1", "routed x4")
TARGETS = {"chain": 1.5, "fanout": 1.2}  # routed within this many times local, per step
OVERHEAD_TARGETS_MS = {"p50": 5.0, "p99": 20.0}


@dataclass
class StepClock:
    """Seconds each tool call took in the runner it wraps, by the step's idempotency key."""

    seconds: dict[str, float] = field(default_factory=dict)

    def wrap(
        self, runner: Callable[..., Awaitable[dict[str, Any]]]
    ) -> Callable[..., Awaitable[dict[str, Any]]]:
        async def timed(
            tool: str, version: str | None, args: dict[str, Any], key: str | None
        ) -> dict[str, Any]:
            started = time.perf_counter()
            try:
                return await runner(tool, version, args, key)
            finally:
                if key is not None:
                    self.seconds[key] = time.perf_counter() - started

        return timed


class BusyCounter(logging.Handler):
    """Counts the delegators' "busy peer: asking again" decisions (node.executor logs each)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.busy = 0
        self.other_node = 0

    @classmethod
    def installed(cls) -> BusyCounter:
        """A counter of this process's delegators (node.executor's log), which it takes
        over: counted, not printed (there may be thousands)."""
        counter = cls()
        executor_log = logging.getLogger("node.executor")
        executor_log.addHandler(counter)
        executor_log.setLevel(logging.INFO)
        executor_log.propagate = False
        return counter

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "asking again" in text:
            self.busy += 1
        elif "trying another node" in text:
            self.other_node += 1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def overheads_ms(view: Any, clock: StepClock) -> list[float]:
    """Each step's time in ``status`` minus its tool's time on the node that ran it, in ms."""
    out = []
    for step in view.steps:
        tool_s = clock.seconds.get(f"{view.workflow_id}/{step.name}")
        if tool_s is None or step.started_at is None or step.ended_at is None:
            continue
        out.append((step.ended_at - step.started_at - tool_s) * 1000)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each workflow per place")
    parser.add_argument("--chain", type=int, default=50, help="steps of the chain")
    parser.add_argument("--fanout", type=int, default=200, help="branches of the fan-out")
    parser.add_argument(
        "--big", type=int, default=10_000, help="branches of the big fan-out (0: skip it)"
    )
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--node-cpus", type=int, default=1, help="CPUs each node is given")
    parser.add_argument(
        "--synchronous",
        choices=["FULL", "NORMAL"],
        help="every node's journal.synchronous (default: the config's, FULL)",
    )
    parser.add_argument(
        "--default-quotas", action="store_true", help="keep the per-peer quotas at their defaults"
    )
    parser.add_argument(
        "--reserved-share",
        type=float,
        help="every node's handoff.reserved_share (default: the config's, 0.25: a provider "
        "of one CPU gives peers 1 of its 2 slots, half what the local run gets)",
    )
    parser.add_argument(
        "--processes",
        action="store_true",
        help="run every node in a process of its own (all on this run's Ray), as separate "
        "daemons would; by default all six share this process's trio loop",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also save the raw figures")
    return parser.parse_args()


def _handoff_section(args: argparse.Namespace) -> dict[str, Any] | None:
    section: dict[str, Any] = {} if args.default_quotas else dict(LIFTED)
    if args.reserved_share is not None:
        section["reserved_share"] = args.reserved_share
    return section or None


def big_limits() -> Any:
    """Parse limits that let the big fan-out through."""
    from workflows.dsl import ParseLimits

    return ParseLimits(
        max_steps=100_000,
        max_bytes=64 * 1024 * 1024,
        max_nodes=10_000_000,
        max_expanded_bytes=256 * 1024 * 1024,
        timeout_s=600,
    )


def main() -> int:
    args = parse_args()
    setup_process()

    import trio

    from node.config import NodeConfig
    from node.daemon import start_ray, stop_ray

    load_before = os.getloadavg()
    cpus, gcs_address = start_ray(
        NodeConfig.model_validate({"ray": {"num_cpus": args.ray_cpus}}).ray
    )
    try:
        with tempfile.TemporaryDirectory(prefix="hm-bench-routing") as tmp:
            swarm: Swarm
            if args.processes:
                swarm = NodeProcesses(Path(tmp), args, gcs_address)
            else:
                swarm = InProcess(Path(tmp), args)
            result = trio.run(measure, swarm, args)
    finally:
        stop_ray()
    load_after = os.getloadavg()
    report(result, args, cpus, load_before, load_after)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result))
    return 0 if not result["failures"] else 1


class Swarm:
    """The six nodes (``p1``..``p4``, ``c1``, ``c4``) of one run, wherever they run."""

    async def start(self, nursery: Any) -> None:
        raise NotImplementedError

    async def define(self, name: str, text: str) -> None:
        """Parse a workload on the nodes it is submitted to."""
        raise NotImplementedError

    async def run(
        self, place: str, name: str, steps: int, expected: Any
    ) -> tuple[float, list[float]]:
        """(seconds from submit to end, each step's overhead in ms); RuntimeError if the
        workflow failed, had a wrong result or ran somewhere else."""
        raise NotImplementedError

    async def busy(self) -> int:
        """Busy-peer rejections the delegators asked again after, so far."""
        raise NotImplementedError

    async def stop(self) -> None:
        """Stop every node."""


class InProcess(Swarm):
    """Every node in this process's trio loop, as tests/integration/harness.py starts them."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        from node.config import NodeConfig
        from node.daemon import Node
        from node.home import Home
        from node.swarmkey import SwarmKey

        self.factory = NodeFactory(
            tmp,
            Node,
            Home,
            NodeConfig,
            SwarmKey,
            private=True,
            cpus=args.node_cpus,
            synchronous=args.synchronous,
            handoff=_handoff_section(args),
        )
        self.counter = BusyCounter.installed()
        self.clock = StepClock()
        self.specs: dict[str, Any] = {}
        self.places: dict[str, tuple[Any, list[str]]] = {}

    async def start(self, nursery: Any) -> None:
        import trio

        providers: list[Any] = []
        for i in range(4):
            bootstrap = [a for q in providers for a in q.host.addrs()]
            # providers run every step they get themselves: p1 is the local reference
            p = self.factory(f"p{i + 1}", "util,math", bootstrap, delegate_to=[])
            await nursery.start(p.run)
            p.handoff.run_tool = self.clock.wrap(p.handoff.run_tool)
            providers.append(p)
        p1 = providers[0]
        p1.executor.run_local = self.clock.wrap(p1.executor.run_local)
        c1 = self.factory("c1", "none", p1.host.addrs(), delegate_to=[p1.peer_id])
        await nursery.start(c1.run)
        c4 = self.factory("c4", "none", [a for p in providers for a in p.host.addrs()])
        await nursery.start(c4.run)
        with trio.fail_after(60):
            while not (
                c1.registry.has_fresh_card(p1.peer_id)
                and all(c4.registry.has_fresh_card(p.peer_id) for p in providers)
            ):
                await trio.sleep(0.05)
        every = [p.peer_id for p in providers]
        self.places = {
            "local": (p1, [p1.peer_id]),
            "routed x1": (c1, [p1.peer_id]),
            "routed x4": (c4, every),
        }

    async def define(self, name: str, text: str) -> None:
        from workflows.dsl import parse_workflow

        self.specs[name] = parse_workflow(text, limits=big_limits())

    async def run(
        self, place: str, name: str, steps: int, expected: Any
    ) -> tuple[float, list[float]]:
        target, ran_on = self.places[place]
        seconds, view = await run_checked(
            target, self.specs[name], steps, expected, ran_on, timeout_s=3600
        )
        return seconds, overheads_ms(view, self.clock)

    async def busy(self) -> int:
        return self.counter.busy


class NodeProcesses(Swarm):
    """Every node in a process of its own (``_node_proc.py``), each with its own trio loop
    and journal, all joined to this process's Ray: what separate daemons on one machine
    see, on the same Ray workers for local and routed steps."""

    def __init__(self, tmp: Path, args: argparse.Namespace, gcs_address: str) -> None:
        from node.swarmkey import SwarmKey

        self.tmp = tmp
        self.args = args
        self.gcs_address = gcs_address
        SwarmKey.generate().write_new(tmp / "swarm.key")
        self.children: dict[str, _Child] = {}
        self.places: dict[str, tuple[str, list[str]]] = {}

    async def _spawn(
        self, name: str, tools: str, bootstrap: list[str], delegate_to: list[str] | None
    ) -> _Child:
        import trio

        spec = {
            "tmp": str(self.tmp),
            "name": name,
            "tools": tools,
            "bootstrap": bootstrap,
            "delegate_to": delegate_to,
            "handoff": _handoff_section(self.args),
            "cpus": self.args.node_cpus,
            "synchronous": self.args.synchronous,
            "ray_address": self.gcs_address,
        }
        child = await trio.to_thread.run_sync(_Child, name, spec)
        self.children[name] = child
        return child

    async def start(self, nursery: Any) -> None:
        providers: list[_Child] = []
        for i in range(4):
            bootstrap = [a for q in providers for a in q.addrs]
            providers.append(await self._spawn(f"p{i + 1}", "util,math", bootstrap, []))
        p1 = providers[0]
        c1 = await self._spawn("c1", "none", p1.addrs, [p1.peer_id])
        c4 = await self._spawn("c4", "none", [a for p in providers for a in p.addrs], None)
        every = [p.peer_id for p in providers]
        await c1.ask({"op": "cards", "peers": [p1.peer_id]})
        await c4.ask({"op": "cards", "peers": every})
        self.places = {
            "local": ("p1", [p1.peer_id]),
            "routed x1": ("c1", [p1.peer_id]),
            "routed x4": ("c4", every),
        }

    async def define(self, name: str, text: str) -> None:
        for child in self.children.values():
            if child.name in ("p1", "c1", "c4"):
                await child.ask({"op": "define", "name": name, "yaml": text})

    async def run(
        self, place: str, name: str, steps: int, expected: Any
    ) -> tuple[float, list[float]]:
        target, ran_on = self.places[place]
        done = await self.children[target].ask(
            {"op": "run", "name": name, "steps": steps, "expected": expected, "ran_on": ran_on}
        )
        wid = done["workflow_id"]
        keys = [f"{wid}/{step}" for step, _, _ in done["steps"]]
        tool_s: dict[str, float] = {}
        for child in self.children.values():
            if child.name.startswith("p"):
                tool_s.update(await child.ask({"op": "clock", "keys": keys}))
        overheads = [
            (ended - started - tool_s[f"{wid}/{step}"]) * 1000
            for step, started, ended in done["steps"]
            if f"{wid}/{step}" in tool_s and started is not None and ended is not None
        ]
        return done["seconds"], overheads

    async def busy(self) -> int:
        total = 0
        for name in ("c1", "c4"):
            total += (await self.children[name].ask({"op": "busy"}))["busy"]
        return total

    async def stop(self) -> None:
        import trio

        for child in self.children.values():
            await trio.to_thread.run_sync(child.stop)


class _Child:
    """A ``_node_proc.py`` process: started, asked, stopped (its log in ``.bench/logs``)."""

    def __init__(self, name: str, spec: dict[str, Any]) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = open(LOG_DIR / f"routing-{name}.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "_node_proc.py"), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
        )
        first = self._read()
        self.peer_id: str = first["peer_id"]
        self.addrs: list[str] = first["addrs"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"node {self.name} exited (see {self.log.name})")
        record: dict[str, Any] = json.loads(line)
        return record

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(f"{self.name}: {answer['error']}")
        return answer

    async def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        import trio

        return await trio.to_thread.run_sync(self._ask, request)

    def stop(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "stop"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def measure(swarm: Swarm, args: argparse.Namespace) -> Any:
    import trio

    workloads = {
        "chain": (chain_yaml(args.chain), args.chain, args.chain),
        "fanout": (
            fanout_yaml(args.fanout),
            args.fanout + 1,
            sum(i + 1 for i in range(args.fanout)),
        ),
    }
    async with trio.open_nursery() as nursery:
        try:
            await swarm.start(nursery)
            for name, (text, _, _) in workloads.items():
                await swarm.define(name, text)
            failures: list[str] = []

            async def run(
                place: str, name: str, steps: int, expected: Any
            ) -> tuple[float, list[float]] | None:
                try:
                    return await swarm.run(place, name, steps, expected)
                except RuntimeError as exc:
                    failures.append(f"{place} {name}: {exc}")
                    return None

            # warm-up: Ray's workers, imports, connections, the delegators' evidence of
            # their peers
            for place in PLACES:
                for name, (_, steps, expected) in workloads.items():
                    await run(place, name, steps, expected)
            busy_warm = await swarm.busy()

            # name -> place -> [seconds per run]; name -> place -> [overhead ms of each step]
            seconds: dict[str, dict[str, list[float]]] = {
                n: {p: [] for p in PLACES} for n in workloads
            }
            overhead: dict[str, dict[str, list[float]]] = {
                n: {p: [] for p in PLACES} for n in workloads
            }
            for rnd in range(args.rounds):
                order = PLACES[rnd % 3 :] + PLACES[: rnd % 3]
                print(f"round {rnd + 1}/{args.rounds}: {', '.join(order)}", file=sys.stderr)
                for name, (_, steps, expected) in workloads.items():
                    for place in order:
                        done = await run(place, name, steps, expected)
                        if done is not None:
                            seconds[name][place].append(done[0])
                            overhead[name][place] += done[1]
            busy_rounds = await swarm.busy() - busy_warm

            big: dict[str, float | None] = {}
            if args.big:
                print(f"the {args.big}-step fan-out: local, then routed x4", file=sys.stderr)
                await swarm.define("big", fanout_yaml(args.big))
                expected = sum(i + 1 for i in range(args.big))
                for place in ("local", "routed x4"):
                    before = await swarm.busy()
                    done = await run(place, "big", args.big + 1, expected)
                    big[place] = None if done is None else done[0]
                    big[f"{place} busy"] = await swarm.busy() - before
            every_busy = await swarm.busy()
        finally:
            await swarm.stop()
        nursery.cancel_scope.cancel()
    return {
        "nodes": "processes" if args.processes else "one process",
        "steps": {n: s for n, (_, s, _) in workloads.items()},
        "seconds": seconds,
        "overhead_ms": overhead,
        "big": big,
        "busy_rejections": {"rounds": busy_rounds, "all": every_busy},
        "failures": failures,
    }


def report(
    result: Any,
    args: argparse.Namespace,
    ray_cpus: int,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    steps, seconds = result["steps"], result["seconds"]
    print(
        f"\nms per step: median over {args.rounds} rounds (local = on p1, which has the tools; "
        "routed xN = submitted to a tool-less node with N providers); "
        "x local: median of the same round's ratios"
    )
    print(
        f"{'workflow':<22}"
        + "".join(f"{p:>12}" for p in PLACES)
        + f"{'x1/local':>10}{'x4/local':>10}"
    )
    ratios: dict[str, dict[str, float]] = {}
    for name, runs in seconds.items():
        per_step = {p: [s * 1000 / steps[name] for s in runs[p]] for p in PLACES}
        ratio = {
            p: statistics.median(
                [r / loc for r, loc in zip(per_step[p], per_step["local"], strict=False)]
            )
            if per_step[p] and per_step["local"]
            else float("nan")
            for p in PLACES[1:]
        }
        ratios[name] = ratio
        label = f"{name} ({steps[name]} steps)"
        cells = "".join(
            f"{statistics.median(per_step[p]) if per_step[p] else float('nan'):>12.2f}"
            for p in PLACES
        )
        print(f"{label:<22}{cells}{ratio['routed x1']:>10.2f}{ratio['routed x4']:>10.2f}")

    print("\nper-step overhead, ms (step's time in status minus the tool's run on its node):")
    print(f"{'workflow':<22}{'place':<12}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'n':>6}")
    for name, by_place in result["overhead_ms"].items():
        for place in PLACES:
            values = by_place[place]
            cells = (
                "".join(f"{percentile(values, q):>8.2f}" for q in (0.5, 0.9, 0.99))
                + f"{max(values) if values else float('nan'):>8.2f}"
            )
            print(f"{name:<22}{place:<12}{cells}{len(values):>6}")

    big = result["big"]
    if big:
        local_s, routed_s = big.get("local"), big.get("routed x4")
        n = args.big + 1
        line = f"\n{args.big}-step fan-out (+ sum): "
        line += "local " + (
            f"{local_s * 1000 / n:.2f} ms/step ({local_s:.1f} s)" if local_s else "FAILED"
        )
        line += ", routed x4 " + (
            f"{routed_s * 1000 / n:.2f} ms/step ({routed_s:.1f} s)" if routed_s else "FAILED"
        )
        if local_s and routed_s:
            line += f", x{routed_s / local_s:.2f}"
        line += f"; busy rejections asked again: {big.get('routed x4 busy', 0)}"
        print(line)

    print("\ntargets:")
    chain_oh = result["overhead_ms"]["chain"]
    for name, limit in TARGETS.items():
        for place in PLACES[1:]:
            r = ratios[name][place]
            verdict = "met" if r <= limit else "MISSED"
            print(f"  {name} {place} within {limit}x local per step: x{r:.2f} {verdict}")
    for place in PLACES[1:]:
        for q, limit in OVERHEAD_TARGETS_MS.items():
            v = percentile(chain_oh[place], 0.5 if q == "p50" else 0.99)
            verdict = "met" if v < limit else "MISSED"
            print(f"  chain {place} handoff overhead {q} < {limit:g} ms: {v:.2f} ms {verdict}")
    if big:
        ok = big.get("routed x4") is not None
        print(
            f"  {args.big}-step fan-out through four providers completes: "
            f"{'met' if ok else 'MISSED'}"
        )
    quotas = "defaults" if args.default_quotas else f"lifted ({LIFTED})"
    print(
        f"\nper-peer quotas {quotas}; busy rejections asked again in the timed rounds: "
        f"{result['busy_rejections']['rounds']}; failures: {len(result['failures'])}"
    )
    for failure in result["failures"]:
        print(f"  FAILED {failure}")
    print(
        f"nodes: {result['nodes']}; Ray CPUs {ray_cpus}, node cpus {args.node_cpus}, "
        "handoff.reserved_share "
        f"{'0.25 (default)' if args.reserved_share is None else args.reserved_share}, "
        f"journal.synchronous {args.synchronous or 'FULL (default)'}; load average (1 min) "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} CPUs, shared)"
    )


if __name__ == "__main__":
    sys.exit(main())
