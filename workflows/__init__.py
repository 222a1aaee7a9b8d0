"""hivemesh's durable workflow engine on current Ray, with Ray Workflows' API.

A Ray Workflows (2.x) program moves over by changing one line::

    from ray import workflow        # Ray <= 2.47
    import workflows as workflow    # hivemesh, on current Ray

and calling ``workflow.init(storage=PATH)`` where it used ``ray.init(storage=PATH)``.
The API and the YAML/tool parts are loaded lazily, so importing ``workflows`` does not
import Ray until a Ray-backed function is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from workflows.errors import (
    WorkflowCancellationError,
    WorkflowError,
    WorkflowExecutionError,
    WorkflowNotFoundError,
    WorkflowNotResumableError,
    WorkflowQuarantinedError,
    WorkflowStillActiveError,
)
from workflows.status import WorkflowStatus

# Ray Workflows put the statuses in the module namespace too (workflow.RUNNING, ...)
NONE = WorkflowStatus.NONE
RUNNING = WorkflowStatus.RUNNING
CANCELED = WorkflowStatus.CANCELED
SUCCESSFUL = WorkflowStatus.SUCCESSFUL
FAILED = WorkflowStatus.FAILED
RESUMABLE = WorkflowStatus.RESUMABLE
PENDING = WorkflowStatus.PENDING
QUARANTINED = WorkflowStatus.QUARANTINED  # hivemesh's own (docs/workflows-api.md, §2.6)

_LAZY = {
    "init": "workflows.api",
    "is_initialized": "workflows.api",
    "shutdown": "workflows.api",
    "run": "workflows.api",
    "run_async": "workflows.api",
    "resume": "workflows.api",
    "resume_async": "workflows.api",
    "resume_all": "workflows.api",
    "get_status": "workflows.api",
    "get_output": "workflows.api",
    "get_output_async": "workflows.api",
    "get_metadata": "workflows.api",
    "list_all": "workflows.api",
    "cancel": "workflows.api",
    "delete": "workflows.api",
    "options": "workflows.api",
    "sleep": "workflows.api",
    "wait_for_event": "workflows.api",
    "continuation": "workflows.engine.step",
    "EventListener": "workflows.events",
    "step": "workflows.legacy",
}

__all__ = [
    "WorkflowCancellationError",
    "WorkflowError",
    "WorkflowExecutionError",
    "WorkflowNotFoundError",
    "WorkflowNotResumableError",
    "WorkflowQuarantinedError",
    "WorkflowStatus",
    "WorkflowStillActiveError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'workflows' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
