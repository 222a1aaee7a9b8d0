"""The benchmark's steps and workloads, written once for all three systems.

The import switch is the environment variable ``BENCH_SYSTEM`` (set by the parent before
this module is imported, and inherited by Ray's worker processes, which import this
module again to unpickle the steps):

- ``hivemesh``: ``import workflows as workflow`` (the project's engine);
- ``ray247``:   ``from ray import workflow`` (Ray Workflows, Ray 2.47 venv only);
- ``ray``:      plain Ray tasks, no ``workflow`` module.

A workload is a function of the API: ``call(fn, *args)`` is ``fn.bind(*args)`` for the
workflow systems and ``fn.remote(*args)`` for plain Ray, and ``finish(node)`` is
``workflow.run(node, workflow_id=...)`` or ``ray.get(node)``. fib is the one workload
whose shape differs: a continuation for the workflow systems, nested tasks for plain Ray.
Only stdlib and ray are imported here: this module runs in both venvs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import ray

SYSTEM = os.environ.get("BENCH_SYSTEM", "ray")


def load_workflow_api(system: str) -> ModuleType | None:
    """The ``workflow`` module for ``system``, or None for plain Ray."""
    if system == "hivemesh":
        import workflows

        return workflows
    if system == "ray247":
        from ray import workflow as ray_workflow

        return ray_workflow
    return None


workflow = load_workflow_api(SYSTEM)


# --- steps -----------------------------------------------------------------------------


@ray.remote
def inc(x: int) -> int:
    return x + 1


@ray.remote
def sum_all(*values: int) -> int:
    return sum(values)


@ray.remote
def add(a: int, b: int) -> int:
    return a + b


@ray.remote
def fib(n: int) -> Any:
    """The classic Ray Workflows example: fib by continuation."""
    if n <= 1:
        return n
    assert workflow is not None, "fib by continuation needs a workflow system"
    return workflow.continuation(add.bind(fib.bind(n - 1), fib.bind(n - 2)))


@ray.remote
def fib_nested(n: int) -> int:
    """Plain Ray's fib: each task submits its two children and waits for them."""
    if n <= 1:
        return n
    a, b = ray.get([fib_nested.remote(n - 1), fib_nested.remote(n - 2)])
    return a + b


@ray.remote
def logged_step(prev: int, index: int, log_path: str, sleep_s: float) -> int:
    """Recovery benchmark step: log "index epoch pid time" with one O_APPEND write, sleep.

    The line is written when the body starts, so a line means "this body ran" (once per
    execution, including executions whose result was never committed).
    """
    epoch = os.environ.get("BENCH_EPOCH", "?")
    line = f"{index} {epoch} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    time.sleep(sleep_s)
    return prev + 1


# --- workloads -------------------------------------------------------------------------

Call = Callable[..., Any]


def build_chain(call: Call, n: int) -> Any:
    """``n`` steps of ``x + 1`` starting from 0, each depending on the previous one."""
    node: Any = 0
    for _ in range(n):
        node = call(inc, node)
    return node


def build_fanout(call: Call, n: int) -> Any:
    """``n`` independent steps ``i + 1`` feeding one ``sum_all`` step."""
    return call(sum_all, *[call(inc, i) for i in range(n)])


def build_logged_chain(call: Call, n: int, log_path: str, sleep_s: float) -> Any:
    """The recovery benchmark's chain: ``n`` logged steps; the result is ``n``."""
    node: Any = 0
    for index in range(n):
        node = call(logged_step, node, index, log_path, sleep_s)
    return node


def fib_value(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def fib_calls(n: int) -> int:
    """Number of fib invocations in the naive recursion: 2*fib(n+1) - 1 (465 for n=12)."""
    return 2 * fib_value(n + 1) - 1


def _fib_steps(n: int) -> int:
    """Workflow fib(n) steps: every fib call, plus one add per call that continues."""
    calls = fib_calls(n)
    return calls + (calls - 1) // 2


@dataclass(frozen=True)
class Workload:
    name: str
    size: int
    expected: int
    workflow_steps: int  # steps run by the workflow systems
    plain_steps: int  # tasks for plain Ray


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("chain", 1000, 1000, 1000, 1000),
        Workload("chain10k", 10_000, 10_000, 10_000, 10_000),
        Workload("fanout", 1000, 1000 * 1001 // 2, 1001, 1001),
        # Workflow fib(12): 465 fib steps + 232 add steps; plain Ray: 465 nested tasks.
        Workload("fib", 12, fib_value(12), _fib_steps(12), fib_calls(12)),
        Workload("fanout100k", 100_000, 100_000 * 100_001 // 2, 100_001, 100_001),
    )
}


def steps_for(workload: Workload, system: str) -> int:
    return workload.plain_steps if system == "ray" else workload.workflow_steps


BUILDERS: dict[str, Callable[[Call, int], Any]] = {
    "chain": build_chain,
    "chain10k": build_chain,
    "fanout": build_fanout,
    "fanout100k": build_fanout,
}


def run_workload(name: str, system: str, workflow_id: str) -> Any:
    """Build and run workload ``name`` on ``system``; returns the workflow's output."""
    workload = WORKLOADS[name]
    if system == "ray":
        if name == "fib":
            return ray.get(fib_nested.remote(workload.size))
        return ray.get(BUILDERS[name](_remote, workload.size))
    assert workflow is not None, f"BENCH_SYSTEM={SYSTEM!r} but system {system!r} asked for"
    dag = fib.bind(workload.size) if name == "fib" else BUILDERS[name](_bind, workload.size)
    return workflow.run(dag, workflow_id=workflow_id)


def warm_up(system: str) -> None:
    """A few tasks (or a tiny workflow) so worker processes and actors already exist."""
    for round_ in range(2):
        if system == "ray":
            ray.get(build_fanout(_remote, 4))
        else:
            assert workflow is not None
            workflow.run(build_fanout(_bind, 4), workflow_id=f"bench-warmup-{round_}")


def _remote(fn: Any, *args: Any) -> Any:
    return fn.remote(*args)


def _bind(fn: Any, *args: Any) -> Any:
    return fn.bind(*args)
