"""Workflow states (the names and values of Ray Workflows 2.x)."""

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
