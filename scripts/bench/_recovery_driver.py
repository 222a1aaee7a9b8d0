"""A driver for the recovery benchmark (started, and killed, by recovery.py).

    python _recovery_driver.py run    SYSTEM STORAGE LOG STEPS SLEEP_S
    python _recovery_driver.py resume SYSTEM STORAGE LOG STEPS SLEEP_S

``run`` starts the logged chain as workflow "recovery"; ``resume`` calls
``workflow.resume("recovery")``. Both start their own local Ray (127.0.0.1, 2 CPUs) and
open the same storage. Events go to stdout as JSON lines ({"event", "t", ...}, with
``t = time.time()``, the clock the steps log with), flushed at once because the ``run``
driver is killed with SIGKILL. Runs with the project venv or the Ray 2.47 venv.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

from _worker import check_engine, prepare_env, ray_init_kwargs

WORKFLOW_ID = "recovery"


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def drive(mode: str, system: str, storage: str, log_path: str, steps: int, sleep_s: float) -> None:
    import _workloads
    import ray

    workflow = _workloads.workflow
    assert workflow is not None
    if system == "ray247":
        sys.setrecursionlimit(100_000)  # Ray Workflows walks/pickles the static DAG recursively
    init_kwargs = ray_init_kwargs(system, storage)
    ray.init(**init_kwargs)
    if system == "hivemesh":
        workflow.init(storage=storage)
    else:
        workflow.init()
    emit("ready", pid=os.getpid())
    if mode == "run":
        dag = _workloads.build_logged_chain(
            lambda fn, *args: fn.bind(*args), steps, log_path, sleep_s
        )
        emit("run_call")
        result = workflow.run(dag, workflow_id=WORKFLOW_ID)
    else:
        emit("resume_call")
        result = workflow.resume(WORKFLOW_ID)
    emit("done", result=result if isinstance(result, int) else repr(result))
    ray.shutdown()


def main(argv: list[str]) -> int:
    if len(argv) != 7 or argv[1] not in ("run", "resume"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, system, storage, log_path = argv[1:5]
    steps, sleep_s = int(argv[5]), float(argv[6])
    os.environ["BENCH_EPOCH"] = mode  # Ray's workers inherit it; steps log it as a marker
    prepare_env(system)
    try:
        check_engine(system)
    except Exception as exc:
        emit("error", error=f"not available: {type(exc).__name__}: {exc}", unavailable=True)
        return 1
    try:
        drive(mode, system, storage, log_path, steps, sleep_s)
    except BaseException as exc:
        traceback.print_exc()
        emit("error", error=f"{type(exc).__name__}: {exc}"[:2000])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
