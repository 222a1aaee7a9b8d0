"""Workflow states: the names and values of Ray Workflows 2.x, and QUARANTINED."""

from __future__ import annotations

from enum import StrEnum


class WorkflowStatus(StrEnum):
    NONE = "NONE"
    RUNNING = "RUNNING"
    CANCELED = "CANCELED"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    RESUMABLE = "RESUMABLE"
    PENDING = "PENDING"
    # hivemesh's own: interrupted like RESUMABLE, but not resumed on its own, because
    # resuming it stopped the process too often (docs/workflows-api.md, §2.6)
    QUARANTINED = "QUARANTINED"

    def is_terminal(self) -> bool:
        return self in (WorkflowStatus.SUCCESSFUL, WorkflowStatus.FAILED, WorkflowStatus.CANCELED)
