"""How long a CLI command takes against the home's node: over its control socket, and over
libp2p (the reference, forced with ``HIVEMESH_CLIENT_VIA=libp2p``), in the same run
(issue 12: a one-step ``hivemesh submit --wait`` in under 0.5 s on an idle machine).

A node is started as the README says (``hivemesh node start``, its own Ray, 1 CPU, the
``text`` tools). Then ``--runs`` rounds, each running, as separate ``hivemesh`` processes and
in this order: ``status`` of a finished workflow, then a one-step ``submit --wait`` (a live
progress view on a pipe, then the result), then ``submit --wait --json`` (the result only),
then ``workflows`` (the node's registered workflows) and ``run one --wait`` (the same
one-step workflow, registered from the home's workflows folder, started by name), each
once over the socket and once over libp2p, alternating which goes first (this machine's
speed drifts). Printed: p50 and p90 of each command's wall time per path, the
ratio, and the CLI's import time on each path (``python -X importtime``: the sum of the
top-level imports of a ``status`` run, the median of ``--import-runs``). The interpreter's
own start (``python -c pass``) is printed as the floor, and the machine's load before and
after (the target is for an idle machine; a busy one is flagged).

    .venv/bin/python scripts/bench/cli.py [--runs 20] [--import-runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TARGET_S = 0.5
ONE_STEP = (
    "id: one\nname: One step\nsteps:\n  - name: up\n    tool: text.upper\n"
    "    inputs: [{name: text, value: hello}]\n"
    "outputs: [{name: shouted, value: '{{steps.up.outputs.result}}'}]\n"
)
PATHS = {"socket": "socket", "libp2p": "libp2p"}  # path -> HIVEMESH_CLIENT_VIA


def env_for(via: str) -> dict[str, str]:
    return {**os.environ, "HIVEMESH_CLIENT_VIA": via}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return wall


def import_seconds(cli_args: list[str], env: dict[str, str]) -> tuple[float, bool]:
    """The sum of the top-level imports' cumulative times of one CLI run, and whether it
    imported libp2p."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "node.cli", *cli_args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise SystemExit(f"importtime run failed:\n{out.stderr[-2000:]}")
    total_us = 0
    libp2p = False
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|", 2)
        if not cumulative.strip().isdigit():
            continue  # the header
        if name.rstrip().endswith(" libp2p"):
            libp2p = True
        if not name.startswith("  "):  # (one space after the bar: a top-level import)
            total_us += int(cumulative)
    return total_us / 1e6, libp2p


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--import-runs", type=int, default=5)
    args = parser.parse_args()

    from node.localswarm import LocalSwarm, cli_command

    hivemesh = cli_command()
    load_before = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory(prefix="hm-cli-") as tmp,
        LocalSwarm(Path(tmp), num_cpus=1) as local,
    ):
        # the one-step workflow is also registered by the node, for 'workflows' and 'run'
        (Path(tmp) / "a" / "workflows").mkdir(parents=True)
        (Path(tmp) / "a" / "workflows" / "one.yaml").write_text(ONE_STEP)
        node = local.wait_ready(local.start("a", "text"))
        wf = Path(tmp) / "one.yaml"
        wf.write_text(ONE_STEP)
        at = ["--home", str(node.home)]
        done = subprocess.run(
            [*hivemesh, "submit", str(wf), *at, "--wait", "--json", "--id", "bench-status"],
            capture_output=True,
            text=True,
            env=env_for("socket"),
            timeout=120,
        )
        if done.returncode != 0:
            raise SystemExit(f"warm-up submit failed:\n{done.stderr}")
        commands = {
            "status": ["status", "bench-status", *at],
            "submit --wait": ["submit", str(wf), *at, "--wait"],
            "submit --wait --json": ["submit", str(wf), *at, "--wait", "--json"],
            "workflows": ["workflows", *at],
            "run --wait": ["run", "one", *at, "--wait"],
        }
        walls: dict[tuple[str, str], list[float]] = {(c, p): [] for c in commands for p in PATHS}
        for p in PATHS:  # warm both paths (the node's parse workers, the page cache)
            for cli_args in commands.values():
                timed([*hivemesh, *cli_args], env_for(PATHS[p]))
        order = list(PATHS)
        for i in range(args.runs):
            for c, cli_args in commands.items():
                for p in order if i % 2 == 0 else order[::-1]:
                    walls[(c, p)].append(timed([*hivemesh, *cli_args], env_for(PATHS[p])))
        imports: dict[str, list[float]] = {p: [] for p in PATHS}
        loaded: dict[str, bool] = {}
        for _ in range(args.import_runs):
            for p in PATHS:
                seconds, libp2p = import_seconds(commands["status"], env_for(PATHS[p]))
                imports[p].append(seconds)
                loaded[p] = libp2p
        floor = [timed([sys.executable, "-c", "pass"], dict(os.environ)) for _ in range(5)]

    print(
        f"\none node (own Ray, 1 CPU, text tools); {args.runs} runs of each command per path, "
        "alternating; wall time of the whole hivemesh process\n"
    )
    print(f"{'command':<22} {'path':<7} {'p50 s':>7} {'p90 s':>7}   vs libp2p (p50)")
    for c in commands:
        ref = statistics.median(walls[(c, "libp2p")])
        for p in PATHS:
            ws = walls[(c, p)]
            ratio = "" if p == "libp2p" else f"{statistics.median(ws) / ref:.2f}x"
            print(f"{c:<22} {p:<7} {pct(ws, 0.5):7.3f} {pct(ws, 0.9):7.3f}   {ratio}")
    print("\nimport time of 'hivemesh status' (sum of top-level imports, median):")
    for p in PATHS:
        print(
            f"  {p:<7} {statistics.median(imports[p]):.3f} s"
            f"  (libp2p imported: {'yes' if loaded[p] else 'no'})"
        )
    print(f"  python -c pass (the interpreter's start, whole process): {min(floor):.3f} s")
    load_after = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    busy = max(load_before, load_after) > cores / 2
    print(
        f"  machine load (1-min average) {load_before:.1f} before, {load_after:.1f} after, "
        f"{cores} cores" + (": NOT idle, figures are inflated" if busy else "")
    )
    best = pct(walls[("submit --wait", "socket")], 0.5)
    worst = pct(walls[("submit --wait", "socket")], 0.9)
    verdict = "met" if worst < TARGET_S else "met at p50 only" if best < TARGET_S else "MISSED"
    print(
        f"\ntarget: one-step 'submit --wait' under {TARGET_S} s: p50 {best:.3f} s, "
        f"p90 {worst:.3f} s over the socket: {verdict}"
    )


if __name__ == "__main__":
    main()
