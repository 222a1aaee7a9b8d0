"""One benchmark measurement in a fresh process: ``python _worker.py SYSTEM WORKLOAD``.

SYSTEM is ``hivemesh``, ``ray`` or ``ray247``; WORKLOAD one of ``_workloads.WORKLOADS``.
Starts a local Ray on 127.0.0.1 (2 CPUs, no dashboard), runs a warm-up, then times only
the workload while sampling the summed RSS of the driver and every process it started.
Prints one JSON line on stdout (the last line): wall_s, steps, per_step_ms,
peak_rss_mb (peak minus the baseline just before the workload), peak_rss_abs_mb,
baseline_rss_mb, foreign_cpu_s/pct (CPU other processes used meanwhile), result,
expected, correct, error, unavailable, notes, versions.
Diagnostics go to stderr. Runs with the project venv or the Ray 2.47 venv.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent.parent
ENGINE_API = ("init", "run", "continuation")  # what the harness calls on `workflow`


def ray_init_kwargs(system: str, storage: str) -> dict[str, Any]:
    """How every benchmark process starts its own Ray (2.47 takes the storage there)."""
    kwargs: dict[str, Any] = {
        "address": "local",
        "num_cpus": 2,
        "include_dashboard": False,
        "log_to_driver": False,
    }
    if system == "ray247":
        kwargs["storage"] = storage
    return kwargs


def prepare_env(system: str) -> None:
    """Must run before ray is imported anywhere in this process."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # bind to 127.0.0.1 only
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["BENCH_SYSTEM"] = system
    # Ray's worker processes inherit this and must import _workloads (and `workflows`).
    paths = [str(BENCH_DIR)] + ([str(REPO_ROOT)] if system == "hivemesh" else [])
    current = os.environ.get("PYTHONPATH", "")
    missing = [p for p in paths if p not in current.split(os.pathsep)]
    os.environ["PYTHONPATH"] = os.pathsep.join([*missing, *([current] if current else [])])
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)


def _emit(record: dict[str, Any]) -> None:
    sys.stdout.flush()
    print(json.dumps(record), flush=True)


def check_engine(system: str) -> None:
    """ImportError/AttributeError when the workflow API is missing (engine not landed)."""
    import _workloads

    api = _workloads.workflow
    if system != "ray" and api is None:
        raise ImportError(f"no workflow module for system {system!r}")
    if api is not None:
        for name in ENGINE_API:
            if not hasattr(api, name):
                raise AttributeError(f"module {api.__name__!r} has no attribute {name!r}")


def measure(system: str, workload_name: str, record: dict[str, Any]) -> None:
    import _workloads
    import ray
    from _sampler import MIB, TreeSampler

    workload = _workloads.WORKLOADS[workload_name]
    record["versions"] = {"ray": ray.__version__, "python": platform.python_version()}
    record["steps"] = _workloads.steps_for(workload, system)
    record["expected"] = workload.expected
    if system == "ray247" and workload_name in ("chain", "chain10k"):
        # Ray Workflows walks and pickles a static DAG recursively.
        sys.setrecursionlimit(100_000)
        record["notes"].append("sys.setrecursionlimit(100000) (2.47 needs it for a deep DAG)")

    storage = tempfile.mkdtemp(prefix=f"bench-{system}-{workload_name}-")
    init_kwargs = ray_init_kwargs(system, storage)
    try:
        record["phase"] = "ray start-up"
        ray.init(**init_kwargs)
        record["phase"] = "workflow.init"
        if system == "hivemesh":
            _workloads.workflow.init(storage=storage)  # type: ignore[union-attr]
        elif system == "ray247":
            _workloads.workflow.init()  # type: ignore[union-attr]
        record["phase"] = "warm-up"
        _workloads.warm_up(system)
        record["phase"] = "workload"

        with TreeSampler(interval_s=0.1) as sampler:
            baseline = sampler.start_measuring()
            started = time.perf_counter()
            value = _workloads.run_workload(workload_name, system, f"bench-{workload_name}")
            wall_s = time.perf_counter() - started
        record.update(
            wall_s=wall_s,
            per_step_ms=wall_s * 1000 / record["steps"],
            baseline_rss_mb=baseline / MIB,
            peak_rss_abs_mb=sampler.peak_bytes / MIB,
            peak_rss_mb=(sampler.peak_bytes - baseline) / MIB,
            memory_samples=sampler.samples,
            # CPU time that other processes on the machine used during the workload.
            foreign_cpu_s=sampler.foreign_cpu_s,
            foreign_cpu_pct=100 * sampler.foreign_cpu_s / (wall_s * (os.cpu_count() or 1)),
            result=value if isinstance(value, int | float | str | None) else repr(value),
            correct=value == workload.expected,
            phase="done",
        )
    finally:
        try:
            ray.shutdown()
        finally:
            shutil.rmtree(storage, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} SYSTEM WORKLOAD", file=sys.stderr)
        return 2
    system, workload_name = argv[1], argv[2]
    record: dict[str, Any] = {
        "system": system,
        "workload": workload_name,
        "wall_s": None,
        "steps": None,
        "per_step_ms": None,
        "peak_rss_mb": None,
        "peak_rss_abs_mb": None,
        "baseline_rss_mb": None,
        "result": None,
        "expected": None,
        "correct": False,
        "error": None,
        "unavailable": False,
        "notes": [],
        "phase": "import",  # how far it got: import, ray start-up, ..., workload, done
    }
    prepare_env(system)
    try:
        check_engine(system)
    except (ImportError, AttributeError) as exc:
        record.update(error=f"not available: {type(exc).__name__}: {exc}", unavailable=True)
        _emit(record)
        return 0
    except Exception as exc:  # e.g. a SyntaxError in a half-written engine
        traceback.print_exc()
        record.update(error=f"not available: {type(exc).__name__}: {exc}", unavailable=True)
        _emit(record)
        return 1
    try:
        measure(system, workload_name, record)
    except BaseException as exc:  # report any failure as data; the parent prints it
        traceback.print_exc()
        record["error"] = f"{type(exc).__name__} during {record['phase']}: {exc}"[:2000]
        _emit(record)
        return 1
    _emit(record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
