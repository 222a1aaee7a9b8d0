"""The step API from Ray Workflows' documentation: ``@workflow.step``, ``f.step(...)``,
``output.run(workflow_id=...)``; a step that returns ``g.step(...)`` continues with it."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import ray
from ray.dag import FunctionNode

from workflows.engine.graph import OPTIONS_LABEL

_RAY_KEYS = {
    "num_cpus",
    "num_gpus",
    "memory",
    "resources",
    "runtime_env",
    "max_retries",
    "retry_exceptions",
    "scheduling_strategy",
    "accelerator_type",
}
_WF_KEYS = {
    "name": "task_id",
    "task_id": "task_id",
    "metadata": "metadata",
    "catch_exceptions": "catch_exceptions",
    "checkpoint": "checkpoint",
}


class StepNode(FunctionNode):
    """The result of ``f.step(...)``: a DAG node that can run itself as a workflow."""

    def run(self, workflow_id: str | None = None, metadata: dict[str, Any] | None = None) -> Any:
        from workflows.api import run

        return run(self, workflow_id=workflow_id, metadata=metadata)

    def run_async(
        self, workflow_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> ray.ObjectRef:
        from workflows.api import run_async

        return run_async(self, workflow_id=workflow_id, metadata=metadata)


class StepFunction:
    def __init__(self, func: Callable[..., Any], step_options: dict[str, Any]) -> None:
        unknown = set(step_options) - _RAY_KEYS - set(_WF_KEYS) - {"ray_options"}
        if unknown:
            raise ValueError(f"unknown step option(s): {sorted(unknown)}")
        self._func = func
        self._options = step_options
        functools.update_wrapper(self, func)

    def options(self, **step_options: Any) -> StepFunction:
        return StepFunction(self._func, {**self._options, **step_options})

    def step(self, *args: Any, **kwargs: Any) -> StepNode:
        bound: dict[str, Any] = {}
        wf: dict[str, Any] = {}
        # Ray 1.x's step API: max_retries counts attempts and covers application errors
        # (default 3), unlike Ray's task option of the same name.
        attempts = int(self._options.get("max_retries", 3))
        bound["max_retries"] = max(attempts - 1, 0)
        bound["retry_exceptions"] = self._options.get("retry_exceptions", True)
        for key, value in self._options.items():
            if key in ("max_retries", "retry_exceptions"):
                continue
            if key in _WF_KEYS:
                wf[_WF_KEYS[key]] = value
            elif key == "ray_options":
                bound.update(value or {})
            else:
                bound[key] = value
        if wf:
            bound["_labels"] = {OPTIONS_LABEL: json.dumps(wf)}
        return StepNode(self._func, args, kwargs, bound)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._func(*args, **kwargs)


def step(func: Callable[..., Any] | None = None, **step_options: Any) -> Any:
    """``@workflow.step`` or ``@workflow.step(max_retries=…, catch_exceptions=…, name=…)``."""
    if func is None:
        return lambda f: StepFunction(f, step_options)
    return StepFunction(func, step_options)
