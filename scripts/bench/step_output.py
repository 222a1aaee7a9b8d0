"""What a step with a large output costs a real node: its memory and its journal.

Starts one ``hivemesh node start`` process (its own Ray, 1 CPU) on a fresh home, runs a
small workflow first (so that what any first run allocates is in the baseline), then a
workflow whose one step is ``util.fill`` with ``--size`` characters, and prints the node
process's RSS before, its peak during the workflow (sampled every 20 ms) and after, the
growth of the journal (workflows.db, its WAL and objects/), how long the workflow took and
how it ended. Run it with the default output limit (8 MiB), then with ``--limit`` above
the size to see what the limit saves:

    .venv/bin/python scripts/bench/step_output.py                   # 100 MB, default limit
    .venv/bin/python scripts/bench/step_output.py --limit 1073741824
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from node.localswarm import LocalSwarm

WORKFLOW = """\
id: fill
steps:
  - name: fill
    tool: util.fill
    inputs: [{{name: size, value: {size}}}]
outputs: [{{name: size, value: '{{{{steps.fill.outputs.result}}}}'}}]
"""


def journal_bytes(home: Path) -> int:
    files = [home / "workflows.db", home / "workflows.db-wal", home / "workflows.db-shm"]
    files += [p for p in (home / "objects").rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if p.exists())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000_000, help="characters of output")
    parser.add_argument("--limit", type=int, default=None, help="max_step_output_bytes")
    args = parser.parse_args()
    env = {}
    if args.limit is not None:
        env["HIVEMESH_WORKFLOWS__MAX_STEP_OUTPUT_BYTES"] = str(args.limit)
    with tempfile.TemporaryDirectory() as tmp, LocalSwarm(Path(tmp), env=env) as local:
        root = Path(tmp)
        node = local.wait_ready(local.start("bench", "all"), timeout_s=180)
        home = str(node.home)
        small, big = root / "small.yaml", root / "big.yaml"
        small.write_text(WORKFLOW.format(size=1000))
        big.write_text(WORKFLOW.format(size=args.size))
        warm = local.cli("submit", str(small), "--home", home, "--wait", "--json")
        if warm.returncode != 0:
            raise SystemExit(f"the warm-up workflow failed: {warm.stderr}")
        proc = psutil.Process(node.proc.pid)
        rss0, journal0 = proc.memory_info().rss, journal_bytes(node.home)
        peak = rss0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.wait(0.02):
                peak = max(peak, proc.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        out = local.cli("submit", str(big), "--home", home, "--wait", "--json", timeout_s=600)
        took = time.monotonic() - started
        stop.set()
        sampler.join()
        rss1, journal1 = proc.memory_info().rss, journal_bytes(node.home)
        try:
            ended = json.loads(out.stdout)
            outcome = ended["status"] + (f": {ended['error']}" if ended.get("error") else "")
        except (ValueError, KeyError):
            outcome = (out.stderr or out.stdout).strip().splitlines()[-1:]
        mib = 2**20
        limit = args.limit if args.limit is not None else "default (8 MiB)"
        print(f"step output: {args.size:,} characters; max_step_output_bytes: {limit}")
        print(
            f"node RSS: {rss0 / mib:.1f} MiB before, {peak / mib:.1f} MiB peak "
            f"(+{(peak - rss0) / mib:.1f}), {rss1 / mib:.1f} MiB after"
        )
        print(f"journal: {journal0:,} bytes before, {journal1:,} after (+{journal1 - journal0:,})")
        print(f"workflow: {took:.1f} s, {outcome}")


if __name__ == "__main__":
    main()
