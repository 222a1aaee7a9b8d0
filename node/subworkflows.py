"""Sub-workflow steps: a step that says ``workflow: ID`` runs the registered workflow ID.

The engine hands such a step to the node's tool runner like any step (its ``ToolCall``
carries ``workflow``); :class:`node.executor.SwarmExecutor` passes it here. It runs on the
node that runs the parent (no handoff): the child is submitted through the node's one
idempotent path with the id ``<parent id>.<step>``, and the step waits for it. So a node that
restarts while the child runs re-attaches to it (the child itself resumed at start, like any
workflow) instead of running it twice, and a finished child gives its result at once.

The step's outputs are the child's outputs; a child that ends FAILED, CANCELED or
QUARANTINED fails the step with the child's error. Nested deeper than ``workflows.max_depth``
(the depth is journaled with each child), the step fails: a guard at run time, besides the
check at submit (node.workflow_registry) that no workflow contains itself. A parent
canceled or failed while its child runs cancels the child too; a node shutting down does not
(the child resumes with the node).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from node.handoff.delegator import current_abandon
from node.workflow_registry import WorkflowRegistry
from node.workflow_service import WorkflowService
from protocols import logsafe
from protocols.wire import MAX_ID_LEN
from workflows.dsl import WorkflowSpec
from workflows.errors import WorkflowError
from workflows.status import WorkflowStatus
from workflows.tool_steps import PlacementCallback, StepExecutionError, ToolCall, ToolOutcome

log = logging.getLogger(__name__)

# (spec, inputs, run id, metadata): the node's idempotent start (ControlService.start)
Start = Callable[[WorkflowSpec, dict[str, Any], str, dict[str, Any]], Awaitable[Any]]


def child_id(call: ToolCall) -> str:
    """The id of the sub-workflow a step runs: ``<parent id>.<step>`` (stable across
    restarts, so that the step re-attaches to it), ``~retryN`` added for its N-th retry.
    Longer than a control request's id may
    be (nested sub-workflows), it is cut and given a digest of the whole instead, so that
    ``status`` can still ask about it."""
    wid = f"{call.workflow_id}.{call.step}"
    if call.attempt:  # a retry (``retries:``) runs a new child: the last one ended failed
        wid += f"~retry{call.attempt}"
    if len(wid) <= MAX_ID_LEN:
        return wid
    digest = hashlib.sha256(wid.encode()).hexdigest()[:16]
    return f"{wid[: MAX_ID_LEN - len(digest) - 1]}~{digest}"


class SubWorkflowRunner:
    """Runs the sub-workflow steps of this node's workflows."""

    def __init__(
        self,
        registry: WorkflowRegistry,
        workflows: WorkflowService,
        start: Start,
        *,
        node_id: str,
        max_depth: int,
    ) -> None:
        self.registry = registry
        self.workflows = workflows
        self._start = start
        self.node_id = node_id
        self.max_depth = max_depth

    async def run(self, call: ToolCall, placed: PlacementCallback) -> ToolOutcome:
        assert call.workflow is not None
        await self.registry.ready.wait()  # (a parent resumed at start comes before it)
        entry = self.registry.get(call.workflow)
        if entry is None:
            raise StepExecutionError(str(self.registry.unknown(call.workflow)), node=self.node_id)
        parent = await self.workflows.metadata(call.workflow_id)
        depth = int(parent.get("depth", 0)) + 1
        if depth > self.max_depth:
            raise StepExecutionError(
                f"sub-workflow {call.workflow!r} of step {call.step!r} would be nested "
                f"{depth} deep, more than workflows.max_depth ({self.max_depth})",
                node=self.node_id,
            )
        wid = child_id(call)
        reason = f"sub-workflow {wid}"
        await placed(self.node_id, reason)
        try:
            bound = entry.spec.bind_inputs(call.args)
            await self._start(entry.spec, bound, wid, {"parent": call.workflow_id, "depth": depth})
        except WorkflowError as exc:
            raise StepExecutionError(
                f"sub-workflow {call.workflow!r} could not start: {exc}",
                node=self.node_id,
                reason=reason,
            ) from None
        try:
            view = await self.workflows.wait(wid)
        except trio.Cancelled:
            abandon = current_abandon()
            if abandon is not None and abandon.reason is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    await self.workflows.cancel(wid)
                    log.info("sub-workflow %s canceled: %s", wid, logsafe(abandon.reason))
            raise
        if view.status is WorkflowStatus.SUCCESSFUL:
            return ToolOutcome(dict(view.outputs or {}), self.node_id, reason)
        raise StepExecutionError(
            f"sub-workflow {wid} ended {view.status.value}: {view.error or 'no error text'}",
            node=self.node_id,
            reason=reason,
        )
