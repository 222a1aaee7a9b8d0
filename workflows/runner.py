"""The step-executor contract between the durable engine's YAML steps and whoever runs
them (the node's scheduler).

YAML workflows themselves run on the engine (:mod:`workflows._engine`): each YAML step is a
``tool`` step that the engine hands to a :class:`StepExecutor`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from workflows.tool_steps import StepExecutionError, ToolCall, ToolOutcome

log = logging.getLogger(__name__)
T = TypeVar("T")


# One definition of each, shared with the engine (kept here under their executor names).
StepRequest = ToolCall
StepOutcome = ToolOutcome

PlacementCallback = Callable[[str, str], Awaitable[None]]


class StepExecutor(Protocol):
    async def execute(self, request: StepRequest, placed: PlacementCallback) -> StepOutcome:
        """Run one step somewhere. Call ``placed(node, reason)`` before each attempt.
        Raise :class:`StepExecutionError` on failure."""
        ...


__all__ = [
    "PlacementCallback",
    "StepExecutionError",
    "StepExecutor",
    "StepOutcome",
    "StepRequest",
]
