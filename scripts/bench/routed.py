"""Routed-step overhead before and after issue 8's trust changes, in one run.

    .venv/bin/python scripts/bench/routed.py                # 3 rounds, ~4 min
    .venv/bin/python scripts/bench/routed.py --rounds 5 --also-open --json .bench/routed.json

"Before" is commit 745f3ca, the last one before issue 8 (checked out with ``git worktree add``
into a temporary folder under .bench/, removed at the end); "after" is this working tree. Each
measurement is a fresh ``_routed_driver.py`` process run with ``PYTHONPATH`` set to its tree, so
that tree's ``node``, ``protocols`` and ``workflows`` shadow the installed ones, and with its
own local Ray (127.0.0.1, 2 CPUs). The driver starts, in one trio run, a node ``a`` with the
``util`` and ``math`` tools and a tool-less node ``c`` bootstrapped to it, warms up, and times
a 40-step chain of ``math.add``, a 60-step fan-out into one ``math.sum_list`` (61 steps) and a
one-step workflow: submitted to ``c`` (every step handed off to ``a``: routed) and to ``a``
(local: the reference). The trees alternate round by round (before, after, after, before, ...)
because this machine's speed drifts. Prints milliseconds per step and the after/before ratios.

Under issue 8 ``a``'s per-peer quotas are lifted for the timed runs (a 60-step fan-out from one
peer exceeds the default 16 steps in flight); a last probe runs the routed fan-out once with the
default quotas and prints how it ended.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# scripts/bench is on sys.path as the running script's folder (it is not a package).
from _common import BENCH_DIR, ROOT, STATE_DIR, run_child

BEFORE_COMMIT = "745f3ca"
LOG_DIR = STATE_DIR / "logs"
DRIVER = BENCH_DIR / "_routed_driver.py"
TITLES = {"chain40": "chain 40", "fanout60": "fan-out 60 -> sum", "one": "one step"}

Record = dict[str, Any]


class BenchError(Exception):
    """A driver failed or the old tree could not be checked out; the message says where."""


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def add_worktree(commit: str) -> Path:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"routed-{commit}-", dir=STATE_DIR))
    git("worktree", "add", "--detach", "--quiet", str(path), commit)
    return path


def remove_worktree(path: Path) -> None:
    try:
        git("worktree", "remove", "--force", str(path))
    except BenchError:
        shutil.rmtree(path, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)


def after_label() -> str:
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--", "node", "protocols", "workflows")
    return f"working tree ({head}{' + uncommitted changes' if dirty else ''})"


def run_driver(tree: Path, label: str, tag: str, extra: list[str], timeout_s: float) -> Record:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(tree),  # this tree's packages first; Ray's workers inherit it
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # bind 127.0.0.1, not the outward IP
        RAY_USAGE_STATS_ENABLED="0",
    )
    cmd = [sys.executable, str(DRIVER), str(tree), *extra]
    # cwd: Ray's workers put the driver's working directory before PYTHONPATH on sys.path
    run = run_child(cmd, env, timeout_s, cwd=tree)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"routed-{tag}.log"
    log.write_text(f"$ PYTHONPATH={tree} {' '.join(cmd)}\n{run.stderr}")
    if run.timed_out:
        raise BenchError(f"{label}: the driver timed out after {timeout_s:g} s; log: {log}")
    lines = run.stdout.strip().splitlines()
    try:
        record: Record = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise BenchError(
            f"{label}: the driver printed no result (exit {run.returncode}); log: {log}"
        ) from None
    if not record.get("ok"):
        raise BenchError(f"{label}: {record.get('error')}; log: {log}")
    return record


def per_step_ms(record: Record, where: str, workload: str) -> float:
    """The driver's median run of ``workload``, in ms per step."""
    runs = record["runs"][where][workload]
    return statistics.median(runs) * 1000 / record["steps"][workload]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(variants: list[str], labels: dict[str, str], rounds: list[dict[str, Record]]) -> None:
    first = rounds[0][variants[0]]
    print(
        f"\nms per step: median over {len(rounds)} rounds of each driver's median "
        f"({len(first['runs']['routed']['chain40'])} runs per workload, "
        f"{len(first['runs']['routed']['one'])} of the one-step workflow); "
        "x before: median over rounds of the same round's ratio"
    )
    head = f"{'workload':<30} {'tree':<12} {'routed':>8} {'local':>8} {'routed-local':>13}"
    print(f"{head} {'routed x before':>16} {'local x before':>15}")
    for workload, title in TITLES.items():
        steps = first["steps"][workload]
        name = f"{title} ({steps} step{'s' if steps != 1 else ''})"
        for variant in variants:
            routed = [per_step_ms(r[variant], "routed", workload) for r in rounds]
            local = [per_step_ms(r[variant], "local", workload) for r in rounds]
            diff = [x - y for x, y in zip(routed, local, strict=True)]
            line = (
                f"{name:<30} {variant:<12} {median(routed):8.2f} {median(local):8.2f} "
                f"{median(diff):13.2f}"
            )
            if variant != "before":
                base_r = [per_step_ms(r["before"], "routed", workload) for r in rounds]
                base_l = [per_step_ms(r["before"], "local", workload) for r in rounds]
                rr = median([x / y for x, y in zip(routed, base_r, strict=True)])
                rl = median([x / y for x, y in zip(local, base_l, strict=True)])
                line += f" {rr:15.2f}x {rl:14.2f}x"
            print(line)
            name = ""
    print("\nper-round ratios, routed after/before:")
    for workload, title in TITLES.items():
        ratios = [
            per_step_ms(r["after"], "routed", workload)
            / per_step_ms(r["before"], "routed", workload)
            for r in rounds
        ]
        print(f"  {title:<20} " + " ".join(f"{x:.2f}" for x in ratios))
    firsts = {
        v: median(
            [r[v]["fanout_first_routed_s"] * 1000 / r[v]["steps"]["fanout60"] for r in rounds]
        )
        for v in variants
    }
    print(
        "first routed fan-out of each driver (after a routed chain; after issue 8 the "
        "delegator's evidence of its peer is still young), ms per step: "
        + ", ".join(f"{v} {ms:.2f}" for v, ms in firsts.items())
    )
    print("\ntrees:")
    for variant in variants:
        rec = rounds[0][variant]
        quotas = rec.get("quotas")
        quota_text = "" if quotas is None else f"; a's per-peer quotas: {quotas}"
        print(
            f"  {variant:<12} {labels[variant]}: {rec['swarm']} swarm, node cpus "
            f"{rec['node_cpus']}, Ray CPUs {rec['ray_cpus']}, journal.synchronous "
            f"{rec['synchronous']}{quota_text}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="driver runs per tree")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per workload per driver")
    parser.add_argument("--node-cpus", type=int, default=1, help="CPUs each node is given")
    parser.add_argument(
        "--synchronous",
        choices=["FULL", "NORMAL"],
        help="the nodes' journal.synchronous, both trees (default: the config's, FULL)",
    )
    parser.add_argument(
        "--also-open", action="store_true", help="also the working tree in an open swarm (no key)"
    )
    parser.add_argument(
        "--no-probe", action="store_true", help="skip the fan-out with the default quotas"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per driver")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also save the records")
    args = parser.parse_args()

    common = ["--reps", str(args.reps), "--node-cpus", str(args.node_cpus)]
    if args.synchronous:
        common += ["--synchronous", args.synchronous]
    load_before = os.getloadavg()
    before_tree = add_worktree(BEFORE_COMMIT)
    labels = {"before": f"{BEFORE_COMMIT} (before issue 8)", "after": after_label()}
    trees = {"before": (before_tree, common), "after": (ROOT, common)}
    if args.also_open:
        labels["after, open"] = labels["after"]
        trees["after, open"] = (ROOT, [*common, "--open"])
    variants = list(trees)
    rounds: list[dict[str, Record]] = []
    probe: Record | None = None
    try:
        for i in range(args.rounds):
            order = variants if i % 2 == 0 else variants[::-1]
            done: dict[str, Record] = {}
            for variant in order:
                tree, extra = trees[variant]
                tag = f"{variant.replace(', ', '-')}-{i + 1}"
                print(f"round {i + 1}/{args.rounds}: {variant}", flush=True)
                done[variant] = run_driver(tree, variant, tag, extra, args.timeout)
            rounds.append(done)
        if not args.no_probe:
            print("probe: the routed fan-out with the default quotas", flush=True)
            probe = run_driver(
                ROOT, "probe", "probe", ["--probe", "--default-quotas"], args.timeout
            )
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        remove_worktree(before_tree)
    load_after = os.getloadavg()

    report(variants, labels, rounds)
    if probe is not None:
        if probe["error"] is None:
            outcome = f"succeeded, {probe['seconds'] * 1000 / 61:.2f} ms per step"
        else:
            outcome = f"FAILED: {probe['error']}"
        print(f"\nrouted fan-out under the default per-peer quotas: {outcome}")
    print(
        f"\nload average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after "
        f"({os.cpu_count()} CPUs; a shared machine adds noise). Driver logs: "
        f"{LOG_DIR.relative_to(ROOT)}/routed-*.log"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"labels": labels, "rounds": rounds, "probe": probe}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
