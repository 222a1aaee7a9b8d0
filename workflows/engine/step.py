"""What runs inside a Ray worker for each workflow step."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any

import ray
from ray.dag import DAGNode

from workflows.engine.graph import Graph, TaskIdAllocator, graph_from_dag


@dataclass(frozen=True)
class StepContext:
    workflow_id: str
    task_id: str


_CONTEXT: contextvars.ContextVar[StepContext | None] = contextvars.ContextVar(
    "hivemesh_workflow_step", default=None
)


def current_step() -> StepContext | None:
    return _CONTEXT.get()


@dataclass(frozen=True)
class Continuation:
    dag: DAGNode


@dataclass
class ContinuationGraph:
    """A step's output that says: my output is this sub-workflow's output."""

    graph: Graph


class ParentContinued(Exception):
    """A pipelined step's parent returned a continuation: its output is not the value the
    step reads yet. Raised before the step's body runs; the engine starts the step again
    once the continuation's output is known."""


def execute_step(func: Any, ctx: list[str], *args: Any, **kwargs: Any) -> Any:
    """Run one step body; ``ctx`` is ``[workflow_id, task_id]`` (a list: Ray packs a list
    of strings with msgpack, while a tuple takes its slower pickle path)."""
    for value in args:
        if type(value) is ContinuationGraph:
            raise ParentContinued()
    for value in kwargs.values():
        if type(value) is ContinuationGraph:
            raise ParentContinued()
    token = _CONTEXT.set(StepContext(*ctx))
    try:
        result = func(*args, **kwargs)
    finally:
        _CONTEXT.reset(token)
    if isinstance(result, Continuation):
        result = result.dag
    if isinstance(result, DAGNode):
        # flattened here, in the worker: the driver gets a flat, picklable graph
        return ContinuationGraph(graph_from_dag(result, TaskIdAllocator()))
    return result


remote_execute_step = ray.remote(execute_step)


def function_key(func: Any) -> Any:
    """A key under which a function's Ray export can be shared, or None.

    Code objects hash by content, so a function that came back by value inside a
    continuation maps to the export of its first copy. Closures and unhashable defaults
    get no key (they are passed to the generic wrapper instead)."""
    code = getattr(func, "__code__", None)
    if code is None or getattr(func, "__closure__", None):
        return None
    key = (
        getattr(func, "__module__", None),
        getattr(func, "__qualname__", None),
        code,
        getattr(func, "__defaults__", None),
    )
    try:
        hash(key)
    except TypeError:
        return None
    return key


def make_runner(func: Any) -> Any:
    """A Ray task body for one workflow function (exported to workers once)."""

    def run_step(ctx: list[str], *args: Any, **kwargs: Any) -> Any:
        return execute_step(func, ctx, *args, **kwargs)

    run_step.__name__ = getattr(func, "__name__", "step")
    run_step.__qualname__ = getattr(func, "__qualname__", "step")
    run_step.__module__ = getattr(func, "__module__", __name__)
    return run_step


def continuation(dag: Any) -> Any:
    """Inside a step: make ``dag``'s output this step's output. Outside: run it."""
    if not isinstance(dag, DAGNode):
        raise TypeError(f"continuation() takes a DAG built with .bind(), not {type(dag).__name__}")
    if current_step() is not None:
        return Continuation(dag)
    return ray.get(dag.execute())  # type: ignore[arg-type]
