"""One tree's measurement for routed.py: ``python _routed_driver.py TREE [options]``.

Run with ``PYTHONPATH=TREE`` so that TREE's ``node``, ``protocols`` and ``workflows`` shadow
the installed ones (the tools' entry points name modules, so they follow; Ray's workers
inherit the variable). Starts one local Ray (127.0.0.1, ``--ray-cpus``), then in one trio run
two nodes as tests/integration/harness.py does: ``a`` with the ``util`` and ``math`` tools and
``c`` with none, bootstrapped to ``a``. Works with the tree before issue 8 (no swarm key, the
old Node constructor) and after (a private swarm whose key both nodes share).

After a warm-up, times each workload submitted to ``c`` (every step handed off to ``a``:
routed) and to ``a`` (run on its own Ray: local), ``--reps`` times, alternating. Prints one
JSON line on stdout (the last line); diagnostics and the nodes' logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHAIN_STEPS = 40
FANOUT_BRANCHES = 60


def chain_yaml(n: int) -> str:
    lines = ["id: chain", "steps:"]
    for i in range(n):
        a = "0" if i == 0 else f'"{{{{steps.s{i - 1}.outputs.result}}}}"'
        lines += [
            f"  - name: s{i}",
            "    tool: math.add",
            f"    inputs: [{{name: a, value: {a}}}, {{name: b, value: 1}}]",
        ]
    lines += ["outputs:", f'  - {{name: result, value: "{{{{steps.s{n - 1}.outputs.result}}}}"}}']
    return "\n".join(lines) + "\n"


def fanout_yaml(n: int) -> str:
    lines = ["id: fanout", "steps:"]
    for i in range(n):
        lines += [
            f"  - name: f{i}",
            "    tool: math.add",
            f"    inputs: [{{name: a, value: {i}}}, {{name: b, value: 1}}]",
        ]
    lines += ["  - name: total", "    tool: math.sum_list", "    inputs:", "      - name: values"]
    lines += ["        value:"] + [
        f'          - "{{{{steps.f{i}.outputs.result}}}}"' for i in range(n)
    ]
    lines += ["outputs:", '  - {name: result, value: "{{steps.total.outputs.result}}"}']
    return "\n".join(lines) + "\n"


ONE_STEP_YAML = """\
id: one
steps:
  - name: add
    tool: math.add
    inputs: [{name: a, value: 2}, {name: b, value: 40}]
outputs:
  - {name: result, value: "{{steps.add.outputs.result}}"}
"""

# name -> (yaml, steps, expected result)
WORKLOADS: dict[str, tuple[str, int, int]] = {
    "chain40": (chain_yaml(CHAIN_STEPS), CHAIN_STEPS, CHAIN_STEPS),
    "fanout60": (
        fanout_yaml(FANOUT_BRANCHES),
        FANOUT_BRANCHES + 1,
        sum(i + 1 for i in range(FANOUT_BRANCHES)),
    ),
    "one": (ONE_STEP_YAML, 1, 42),
}
ONE_STEP_RUNS_PER_REP = 5  # a one-step workflow is short: time it more often

# The per-peer quotas of issue 8 that the timed runs lift on ``a`` (the tree before had none).
# With the defaults (16 in flight, 600 offers a minute) a delegator that sends more fails its
# step at once: it takes the quota_exceeded reject as a failed node, and ``a`` is its only one.
LIFTED = {"max_inflight_per_peer": 64, "max_offers_per_minute": 1_000_000}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree", type=Path, help="the source tree on PYTHONPATH (checked)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--node-cpus", type=int, default=1, help="CPUs each node is given")
    parser.add_argument("--open", action="store_true", help="(new tree) an open swarm, no key")
    parser.add_argument(
        "--synchronous",
        choices=["FULL", "NORMAL"],
        help="both nodes' journal.synchronous (default: the config's default, FULL)",
    )
    parser.add_argument(
        "--default-quotas",
        action="store_true",
        help="(new tree) keep a's per-peer quotas at their defaults (else lifted, see LIFTED)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="only run the routed fan-out once after a short warm-up and report how it ended",
    )
    return parser.parse_args()


def _inside(path: str, tree: Path) -> bool:
    return Path(path).resolve().is_relative_to(tree.resolve())


def setup_process() -> None:
    """A driver process: a loopback-only Ray without usage stats; warnings to stderr."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray binds 127.0.0.1 only
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> dict[str, Any]:
    args = parse_args()
    setup_process()

    import node
    import workflows.tools.math
    from node.config import NodeConfig
    from node.daemon import Node, start_ray, stop_ray
    from node.home import Home

    for module in (node, workflows.tools.math):
        if not _inside(str(module.__file__), args.tree):
            raise SystemExit(f"{module.__name__} comes from {module.__file__}, not {args.tree}")
    swarm_key_cls: Any
    try:  # the tree after issue 8: private swarms
        from node.swarmkey import SwarmKey as swarm_key_cls
    except ImportError:  # the tree before issue 8 has no swarm key
        swarm_key_cls = None
    private = swarm_key_cls is not None and not args.open

    cpus, _ = start_ray(NodeConfig.model_validate({"ray": {"num_cpus": args.ray_cpus}}).ray)
    try:
        import ray

        @ray.remote
        def worker_module() -> str:
            import workflows.tools.math as m

            return str(m.__file__)

        worker_file = ray.get(worker_module.remote())
        if not _inside(worker_file, args.tree):
            raise SystemExit(f"Ray's workers import the tools from {worker_file}")
        with tempfile.TemporaryDirectory(prefix="hm-bench-routed") as tmp:
            import trio

            result = trio.run(
                _measure, Path(tmp), args, swarm_key_cls, private, Node, Home, NodeConfig
            )
    finally:
        stop_ray()
    result.update(
        tree=str(args.tree),
        node_module=str(node.__file__),
        worker_module=worker_file,
        swarm="private" if private else "open",
        ray_cpus=cpus,
        node_cpus=args.node_cpus,
        synchronous=args.synchronous or "FULL (default)",
        quotas=None if swarm_key_cls is None else "default" if args.default_quotas else LIFTED,
    )
    return result


@dataclass
class NodeFactory:
    """Makes the nodes of one driver run, as tests/integration/harness.py does, for the tree
    before issue 8 (``swarm_key_cls`` None: no swarm key, the old home) and after."""

    tmp: Path
    node_cls: Any
    home_cls: Any
    config_cls: Any
    swarm_key_cls: Any
    private: bool
    cpus: int
    synchronous: str | None = None
    handoff: dict[str, Any] | None = None  # the handoff section (new tree), e.g. LIFTED
    key_ready: bool = False  # the swarm key file exists (another process made it)

    def __post_init__(self) -> None:
        self.key_file = self.tmp / "swarm.key"
        if self.private and not self.key_ready:
            self.swarm_key_cls.generate().write_new(self.key_file)

    def __call__(self, name: str, tools: str, bootstrap: list[str], **handoff: Any) -> Any:
        home = self.home_cls(self.tmp / name)
        raw: dict[str, Any] = {"tools": tools, "network": {"bootstrap": bootstrap}}
        if self.synchronous:
            raw["journal"] = {"synchronous": self.synchronous}
        if self.swarm_key_cls is None:
            home.init()  # the old home: identity only
        else:
            home.init_identity(open_swarm=not self.private)
            raw["swarm"] = {"key_file": str(self.key_file)} if self.private else {"open": True}
            if self.handoff or handoff:
                raw["handoff"] = {**(self.handoff or {}), **handoff}
        return self.node_cls(self.config_cls.model_validate(raw), home, cpus=self.cpus)


async def start_pair(nursery: Any, make_node: Any, timeout_s: float = 60.0) -> tuple[Any, Any]:
    """Start ``a`` (the ``util`` and ``math`` tools) and ``c`` (no tools, bootstrapped to
    ``a``) in ``nursery``; return them once ``c`` holds ``a``'s card."""
    import trio

    a = make_node("a", "util,math", [])
    await nursery.start(a.run)
    c = make_node("c", "none", a.host.addrs())
    await nursery.start(c.run)
    with trio.fail_after(timeout_s):
        while not c.registry.has_fresh_card(a.peer_id):
            await trio.sleep(0.05)
    return a, c


async def run_checked(
    target: Any,
    spec: Any,
    steps: int,
    expected: Any,
    ran_on: Collection[str],
    timeout_s: float = 300.0,
) -> tuple[float, Any]:
    """Submit ``spec`` to ``target`` and wait for it: (seconds from submit to the end, the
    workflow's view). Checks the result, the number of steps, and that every step ran on one
    of the nodes ``ran_on``."""
    import trio

    from workflows.status import WorkflowStatus

    started = time.perf_counter()
    wid, _ = await target.workflows.submit(spec, {})
    with trio.fail_after(timeout_s):
        view = await target.workflows.wait(wid)
    elapsed = time.perf_counter() - started
    if view.status is not WorkflowStatus.SUCCESSFUL:
        raise RuntimeError(f"{spec.id} on {target.peer_id}: {view.status} {view.error}")
    if view.outputs != {"result": expected}:
        raise RuntimeError(f"{spec.id}: wrong result {view.outputs}")
    where = {s.node for s in view.steps}
    if len(view.steps) != steps or not where <= set(ran_on):
        raise RuntimeError(f"{spec.id}: {len(view.steps)} steps ran on {where}, not on {ran_on}")
    return elapsed, view


async def _measure(
    tmp: Path,
    args: argparse.Namespace,
    swarm_key_cls: Any,
    private: bool,
    node_cls: Any,
    home_cls: Any,
    config_cls: Any,
) -> dict[str, Any]:
    import trio

    from workflows.dsl import parse_workflow

    make_node = NodeFactory(
        tmp,
        node_cls,
        home_cls,
        config_cls,
        swarm_key_cls,
        private,
        args.node_cpus,
        synchronous=args.synchronous,
        handoff=None if args.default_quotas else dict(LIFTED),
    )
    specs = {name: parse_workflow(text) for name, (text, _, _) in WORKLOADS.items()}

    async def run(target: Any, name: str, routed_to: str | None) -> float:
        """Seconds from submit to the end of one workflow; checks result and placement."""
        _, steps, expected = WORKLOADS[name]
        where = [routed_to or target.peer_id]
        return (await run_checked(target, specs[name], steps, expected, where))[0]

    async with trio.open_nursery() as nursery:
        a, c = await start_pair(nursery, make_node)

        if args.probe:
            for _ in range(3):
                await run(c, "one", a.peer_id)
            try:
                seconds: float | None = await run(c, "fanout60", a.peer_id)
                error = None
            except RuntimeError as exc:
                seconds, error = None, str(exc)
            nursery.cancel_scope.cancel()
            return {"probe": "fanout60 routed", "seconds": seconds, "error": error}

        # warm-up: Ray's workers, imports, connections, and (after issue 8) the evidence a
        # delegator keeps of its peer, which lets more steps run there at once
        for _ in range(3):
            await run(c, "one", a.peer_id)
            await run(a, "one", None)
        await run(c, "chain40", a.peer_id)
        await run(a, "chain40", None)
        fanout_first = await run(c, "fanout60", a.peer_id)
        await run(a, "fanout60", None)

        runs: dict[str, dict[str, list[float]]] = {
            "routed": {n: [] for n in WORKLOADS},
            "local": {n: [] for n in WORKLOADS},
        }
        places = [("routed", c, a.peer_id), ("local", a, None)]
        for rep in range(args.reps):
            for name in WORKLOADS:
                times = ONE_STEP_RUNS_PER_REP if name == "one" else 1
                for _ in range(times):
                    for where, target, routed_to in places if rep % 2 == 0 else places[::-1]:
                        runs[where][name].append(await run(target, name, routed_to))
        nursery.cancel_scope.cancel()
    return {
        "steps": {n: steps for n, (_, steps, _) in WORKLOADS.items()},
        "runs": runs,
        "fanout_first_routed_s": fanout_first,
    }


if __name__ == "__main__":
    try:
        record = main()
        record["ok"] = True
    except BaseException as exc:  # report every failure as JSON, with the traceback on stderr
        traceback.print_exc()
        record = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(record), flush=True)
