"""A sub-workflow step (node.subworkflows) with its collaborators faked: the child's id and
depth, its outputs as the step's, its failure as the step's, and the nesting bound."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from node.subworkflows import SubWorkflowRunner
from node.workflow_registry import Registered, WorkflowRegistry
from node.workflow_service import WorkflowView
from workflows.dsl import parse_workflow
from workflows.status import WorkflowStatus
from workflows.tool_steps import StepExecutionError, ToolCall

KID = (
    "id: kid\ninputs: [{name: text}]\n"
    "steps: [{name: up, tool: text.upper, inputs: [{name: text, value: '{{inputs.text}}'}]}]\n"
    "outputs: [{name: shouted, value: '{{steps.up.outputs.result}}'}]\n"
)


class FakeWorkflows:
    def __init__(self, parent_depth: int, ends: WorkflowStatus) -> None:
        self.parent_depth = parent_depth
        self.ends = ends
        self.started: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    async def metadata(self, workflow_id: str) -> dict[str, Any]:
        return {"depth": self.parent_depth} if self.parent_depth else {}

    async def start(
        self, spec: Any, inputs: dict[str, Any], wid: str, meta: dict[str, Any]
    ) -> None:
        self.started.append((wid, inputs, meta))

    async def wait(self, workflow_id: str) -> WorkflowView:
        ok = self.ends is WorkflowStatus.SUCCESSFUL
        return WorkflowView(
            workflow_id=workflow_id,
            name="kid",
            status=self.ends,
            error=None if ok else "step 'up' failed: boom",
            created_at=0.0,
            ended_at=1.0,
            outputs={"shouted": "HI"} if ok else None,
            steps=[],
        )


def runner(fake: FakeWorkflows, max_depth: int = 8) -> SubWorkflowRunner:
    registry = WorkflowRegistry()
    spec = parse_workflow(KID)
    registry.workflows["kid"] = Registered(spec, "/w/kid.yaml", "/w/kid.yaml")
    registry.ready.set()
    return SubWorkflowRunner(
        registry,
        fake,
        fake.start,
        node_id="me",
        max_depth=max_depth,  # type: ignore[arg-type]
    )


CALL = ToolCall("outer", "loud", "hivemesh.workflow", None, {"text": "hi"}, workflow="kid")


async def placed(node: str, reason: str, detail: Any = None) -> None:
    pass


def test_the_child_runs_as_parent_dot_step_and_gives_its_outputs():
    fake = FakeWorkflows(parent_depth=0, ends=WorkflowStatus.SUCCESSFUL)
    outcome = trio.run(runner(fake).run, CALL, placed)
    assert (outcome.outputs, outcome.node, outcome.reason) == (
        {"shouted": "HI"},
        "me",
        "sub-workflow outer.loud",
    )
    assert fake.started == [("outer.loud", {"text": "hi"}, {"parent": "outer", "depth": 1})]


def test_a_failed_child_fails_the_step_with_its_error():
    fake = FakeWorkflows(parent_depth=0, ends=WorkflowStatus.FAILED)
    with pytest.raises(StepExecutionError) as failed:
        trio.run(runner(fake).run, CALL, placed)
    assert str(failed.value) == "sub-workflow outer.loud ended FAILED: step 'up' failed: boom"


def test_nesting_beyond_max_depth_fails_before_the_child_starts():
    fake = FakeWorkflows(parent_depth=2, ends=WorkflowStatus.SUCCESSFUL)
    with pytest.raises(StepExecutionError) as deep:
        trio.run(runner(fake, max_depth=2).run, CALL, placed)
    assert "nested 3 deep, more than workflows.max_depth (2)" in str(deep.value)
    assert fake.started == []


def test_missing_inputs_and_unknown_workflows_fail_the_step():
    fake = FakeWorkflows(parent_depth=0, ends=WorkflowStatus.SUCCESSFUL)
    bare = ToolCall("outer", "loud", "hivemesh.workflow", None, {}, workflow="kid")
    with pytest.raises(StepExecutionError, match="needs a value for required input 'text'"):
        trio.run(runner(fake).run, bare, placed)
    gone = ToolCall("outer", "loud", "hivemesh.workflow", None, {}, workflow="kdi")
    with pytest.raises(StepExecutionError, match="no workflow 'kdi' is registered"):
        trio.run(runner(fake).run, gone, placed)


def test_a_child_id_stays_within_what_control_accepts():
    from node.subworkflows import child_id
    from protocols.wire import MAX_ID_LEN

    long = ToolCall("w" * 260, "step", "hivemesh.workflow", None, {}, workflow="kid")
    wid = child_id(long)
    assert len(wid) == MAX_ID_LEN and wid.startswith("w" * 200) and "~" in wid
    assert child_id(long) == wid  # (the same at every attempt)
    assert child_id(CALL) == "outer.loud"
    retry = ToolCall("outer", "loud", "hivemesh.workflow", None, {}, workflow="kid", attempt=2)
    assert child_id(retry) == "outer.loud~retry2"
