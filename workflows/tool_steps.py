"""The contract between the engine's YAML (tool) steps and whoever runs them.

The engine hands a :class:`ToolCall` to its tool runner (on a node: the scheduler, which
runs it locally on Ray or on a peer) and expects a :class:`ToolOutcome`, or a
:class:`StepExecutionError` saying where the step last was and why it failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from workflows.errors import WorkflowError


@dataclass(frozen=True)
class ToolCall:
    """Run ``tool`` (version requirement ``version``) with ``args`` for one step."""

    workflow_id: str
    step: str
    tool: str
    version: str | None
    args: dict[str, Any]
    declared_outputs: tuple[str, ...] = ()
    previous_node: str | None = None  # where it was running before an interruption
    peers: tuple[str, ...] = ()  # if given, the only nodes it may run on
    replicas: int = 1  # >1: run on that many nodes; accept the output only if all agree
    # how long it waits for a node offering its tool (None: the runner's default)
    provider_wait_s: float | None = None
    # the step is stopped after this many seconds (StepExecutionError, error_type StepTimeout)
    timeout_s: float | None = None
    mode: str = "auto"  # auto, local (this node only) or remote (a peer only)
    resources: dict[str, float] | None = None  # what its Ray task needs (num_cpus, ...)
    attempt: int = 0  # its retries (``retries:``) so far: each retry is a new handoff
    # a pip requirement installed for the step (on a node with tools.install); ``tool`` is
    # then a tool of that package, or the package's name for its own tool
    package: str | None = None
    # environment variables of the step's process, (name, value) sorted by name
    parameters: tuple[tuple[str, str], ...] = ()

    # a sub-workflow step: the id of the registered workflow it runs (``tool`` is then
    # workflows.dsl's SUBWORKFLOW_TOOL and ``args`` that workflow's inputs)
    workflow: str | None = None

    @property
    def package_tool(self) -> str | None:
        """For a package step: the tool asked for, or None for the package's own tool."""
        if self.package is None:
            return None
        return self.tool if "." in self.tool else None

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and restarts: tools may use it for external effects."""
        return f"{self.workflow_id}/{self.step}"


@dataclass(frozen=True)
class ToolOutcome:
    outputs: dict[str, Any]
    node: str
    reason: str


STEP_TIMEOUT = "StepTimeout"
"""The ``error_type`` of a step stopped by its ``timeout``."""


class StepExecutionError(WorkflowError):
    """A step could not produce a result. ``node``/``reason`` say where it last was;
    ``error_type`` names what failed when known (the tool's exception type, e.g.
    ``ValueError``, or :data:`STEP_TIMEOUT`): what ``retries: {on: [...]}`` matches."""

    def __init__(
        self,
        message: str,
        *,
        node: str | None = None,
        reason: str | None = None,
        error_type: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.node = node
        self.reason = reason
        self.error_type = error_type
        # for an attempt stopped mid-way (a timeout): whether its tool may run again safely
        # (declared idempotent or deterministic); None: not known, or not such an attempt
        self.repeatable: bool | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.message, self.node, self.reason, self.error_type))


def _rebuild(
    message: str, node: str | None, reason: str | None, error_type: str | None = None
) -> StepExecutionError:
    return StepExecutionError(message, node=node, reason=reason, error_type=error_type)


SKIPPED_REASON = "skipped: "
"""How the journal's reason of a skipped step starts (``status`` shows it SKIPPED)."""


class PlacementCallback(Protocol):
    """``placed(node, reason, detail)``: where the step goes, why, and (optional, JSON-able)
    how that was decided (e.g. the candidates and their scores); journaled with the step."""

    async def __call__(
        self, node: str, reason: str, detail: Mapping[str, Any] | None = None
    ) -> None: ...


class StepExecutor(Protocol):
    """Runs tool steps for the engine (on a node: local Ray or a peer, from trio)."""

    async def execute(self, request: ToolCall, placed: PlacementCallback) -> ToolOutcome:
        """Run one step somewhere. Call ``placed(node, reason, detail)`` before each attempt
        (``detail`` optional). Raise :class:`StepExecutionError` on failure."""
        ...
