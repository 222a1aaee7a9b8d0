"""The step-executor contract between the durable engine's YAML steps and whoever runs
them (the node's scheduler), and the async bridge to the node's handoff journal.

YAML workflows themselves run on the engine (:mod:`workflows._engine`): each YAML step is a
``tool`` step that the engine hands to a :class:`StepExecutor`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import trio

from workflows.errors import WorkflowError
from workflows.journal import Journal

log = logging.getLogger(__name__)
T = TypeVar("T")


class StepExecutionError(WorkflowError):
    """A step could not produce a result. ``node``/``reason`` say where it last was."""

    def __init__(self, message: str, *, node: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.node = node
        self.reason = reason


@dataclass(frozen=True)
class StepRequest:
    workflow_id: str
    step: str
    tool: str
    version: str | None
    args: dict[str, Any]

    @property
    def idempotency_key(self) -> str:
        return f"{self.workflow_id}/{self.step}"


@dataclass(frozen=True)
class StepOutcome:
    outputs: dict[str, Any]
    node: str
    reason: str


PlacementCallback = Callable[[str, str], Awaitable[None]]


class StepExecutor(Protocol):
    async def execute(self, request: StepRequest, placed: PlacementCallback) -> StepOutcome:
        """Run one step somewhere. Call ``placed(node, reason)`` before each attempt.
        Raise :class:`StepExecutionError` on failure."""
        ...


class AsyncJournal:
    """The journal from trio: every call runs in one worker thread (the single writer)."""

    def __init__(self, journal: Journal) -> None:
        self.sync = journal
        self._limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._limiter)
