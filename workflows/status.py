"""Workflow and step states (the names and values of Ray Workflows 2.x)."""

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

    def is_terminal(self) -> bool:
        return self in (WorkflowStatus.SUCCESSFUL, WorkflowStatus.FAILED, WorkflowStatus.CANCELED)


class StepStatus(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    CANCELED = "CANCELED"  # was running when the workflow failed or was canceled
    SKIPPED = "SKIPPED"  # never ran because the workflow failed or was canceled first
