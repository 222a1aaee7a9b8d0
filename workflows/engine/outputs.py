"""Reading what the journal says about a workflow: its status, its outputs, its error."""

from __future__ import annotations

import time
import uuid
from typing import Any

from workflows.engine import serde
from workflows.engine.liveness import owner_alive
from workflows.engine.storage import Storage, TaskRow, WorkflowRow
from workflows.errors import WorkflowExecutionError
from workflows.status import WorkflowStatus

ACTIVE = (WorkflowStatus.RUNNING, WorkflowStatus.PENDING)


def execution_error(
    workflow_id: str, cause: BaseException | None, message: str | None = None
) -> WorkflowExecutionError:
    """A WorkflowExecutionError that is also an instance of the cause's type, so both
    ``except WorkflowExecutionError`` and ``except ValueError`` (say) catch it."""
    if cause is None or isinstance(cause, WorkflowExecutionError):
        return (
            cause
            if isinstance(cause, WorkflowExecutionError)
            else WorkflowExecutionError(workflow_id, message)
        )
    cls = type(cause)
    try:
        dual = type(
            f"WorkflowExecutionError({cls.__name__})",
            (WorkflowExecutionError, cls),
            {
                "__reduce__": lambda self: (execution_error, (workflow_id, cause, message)),
                "__str__": lambda self: WorkflowExecutionError.__str__(self),
            },
        )
        err: WorkflowExecutionError = Exception.__new__(dual)
        WorkflowExecutionError.__init__(err, workflow_id, message, cause)
        return err
    except TypeError:  # a final class or a layout conflict: plain error with the cause
        return WorkflowExecutionError(workflow_id, message, cause)


def load_task_output(storage: Storage, workflow_id: str, task_id: str) -> Any:
    """A task's committed output, following continuations to their final task."""
    seen = 0
    tid = task_id
    while True:
        row: TaskRow | None = storage.get_task(workflow_id, tid)
        if row is None:
            raise ValueError(f"workflow {workflow_id!r} has no output for task {task_id!r}")
        if row.status == "CONTINUED" and row.continuation is not None:
            tid = serde.loads(row.continuation).output
            seen += 1
            continue
        if row.status != "SUCCESSFUL" or not row.has_output:
            raise ValueError(
                f"task {task_id!r} of workflow {workflow_id!r} has no output ({row.status})"
            )
        return serde.loads(storage.load_value_bytes(row))


def stored_status(row: WorkflowRow, me: str | None) -> WorkflowStatus:
    """The status the journal gives a workflow that no engine of this process runs: a
    RUNNING or PENDING one without a live owner is RESUMABLE, or QUARANTINED if it is
    marked so (see :mod:`workflows.engine.lifecycle`)."""
    status = WorkflowStatus(row.status)
    if status in ACTIVE and (row.owner == me or not owner_alive(row.owner, row.heartbeat)):
        if row.quarantine is not None:
            return WorkflowStatus.QUARANTINED
        return WorkflowStatus.RESUMABLE
    return status


def default_workflow_id() -> str:
    return f"{uuid.uuid4().hex}.{time.time():.6f}"
