"""What registering workflow files costs a node's start: ``node.workflow_registry`` reading
and parsing N files of a workflows folder in the node's parse-worker pool (2 processes, the
default ``workflow_files``), against the same files parsed in this process with
``workflows.dsl.load_workflow`` (the reference: no pipes, no workers). Files are the docs'
two-step 'shout' workflow under N ids; a tenth of them are broken YAML (skipped).

Printed: total and per-file time of each, and how many were registered and skipped.

    .venv/bin/python scripts/bench/registry_load.py [--files 200]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

FLOW = """\
id: {id}
description: Upper-case a text, then count its words.
inputs:
  - name: text
    default: hello swarm
steps:
  - name: up
    tool: text.upper
    inputs: [{{name: text, value: "{{{{inputs.text}}}}"}}]
  - name: count
    tool: text.word_count
    inputs: [{{name: text, value: "{{{{steps.up.outputs.result}}}}"}}]
outputs:
  - name: words
    value: "{{{{steps.count.outputs.result}}}}"
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    logging.getLogger("node.workflow_registry").setLevel(logging.ERROR)  # (the skipped files)

    from node.config import WorkflowFilesConfig
    from node.parse_pool import ParsePool
    from node.workflow_registry import load_registry, workflow_files
    from workflows.dsl import load_workflow
    from workflows.errors import WorkflowDefinitionError

    with tempfile.TemporaryDirectory(prefix="hm-registry-") as tmp:
        folder = Path(tmp)
        for i in range(args.files):
            text = FLOW.format(id=f"flow-{i:05d}")
            if i % 10 == 9:
                text += "oops: [\n"
            (folder / f"flow-{i:05d}.yaml").write_text(text)
        files, problems = workflow_files([folder], max_files=args.files)

        started = time.perf_counter()
        ok = 0
        for f in files:
            try:
                load_workflow(f.path)
                ok += 1
            except WorkflowDefinitionError:
                pass
        in_process = time.perf_counter() - started

        cfg = WorkflowFilesConfig()

        async def register(concurrency: int) -> tuple[float, int, int]:
            pool = ParsePool(
                cfg.parse_limits(), workers=cfg.workers, memory_mb=cfg.worker_memory_mb
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(pool.serve)
                # (the first parse waits for the workers to start: measured apart)
                warm = time.perf_counter()
                await pool.parse(FLOW.format(id="warm"), "warm.yaml")
                print(f"parse workers ready after {time.perf_counter() - warm:.3f} s")
                begun = time.perf_counter()
                registry = await load_registry(
                    files, pool.parse, pool.limits, problems, concurrency=concurrency
                )
                took = time.perf_counter() - begun
                nursery.cancel_scope.cancel()
            return took, len(registry.workflows), len(registry.problems)

        took1, _, _ = trio.run(register, 1)
        took, registered, skipped = trio.run(register, cfg.workers)

    n = len(files)
    print(f"\n{n} files (a tenth broken), default workflow_files, 2 parse workers\n")
    print(f"{'how':<36} {'total s':>8} {'per file ms':>12}")
    print(f"{'in this process (load_workflow)':<36} {in_process:8.3f} {in_process / n * 1e3:12.2f}")
    print(f"{'node registry, one file at a time':<36} {took1:8.3f} {took1 / n * 1e3:12.2f}")
    print(f"{'node registry, both workers':<36} {took:8.3f} {took / n * 1e3:12.2f}")
    print(f"\nregistered {registered}, skipped {skipped} (in process: {ok} parsed)")


if __name__ == "__main__":
    main()
