"""The engine's rules around tool steps, with a scripted tool runner (the real engine and
journal on the session's Ray; the runner stands in for the node's scheduler): retries by
error type, the at-least-once guard for attempts stopped mid-way (a timeout) of tools not
declared idempotent, and on_error after the retries."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from workflows.dsl import parse_workflow
from workflows.engine.graph import graph_from_spec
from workflows.engine.lifecycle import Engine
from workflows.engine.storage import Storage
from workflows.errors import WorkflowExecutionError
from workflows.tool_steps import STEP_TIMEOUT, StepExecutionError, ToolCall, ToolOutcome

pytestmark = pytest.mark.usefixtures("ray_cluster")


def run_with(
    tmp: Path, text: str, outcome: Callable[[ToolCall], Any]
) -> tuple[Any, list[ToolCall]]:
    """Run the YAML ``text`` on an engine whose runner answers each call with
    ``outcome(call)`` (an outputs dict, or an exception to fail with)."""
    calls: list[ToolCall] = []

    def runner(call: ToolCall, placed: Any) -> Future[ToolOutcome]:
        calls.append(call)
        placed("node-a", "scripted", None)
        fut: Future[ToolOutcome] = Future()
        result = outcome(call)
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(ToolOutcome(result, "node-a", "scripted"))
        return fut

    spec = parse_workflow(text)
    storage = Storage(tmp / "journal")
    engine = Engine(storage, tool_runner=runner)
    try:
        fut, _ = engine.submit_graph(lambda: graph_from_spec(spec), (), {}, "w1", {})
        try:
            return fut.result(timeout=30), calls
        except WorkflowExecutionError as exc:
            return exc, calls
    finally:
        engine.shutdown()
        storage.close()


FLOW = """
id: w
steps:
  - name: s
    tool: util.echo
    retries: {max: 3, backoff: 10ms}
    inputs: [{name: value, value: 1}]
"""


def timed_out(repeatable: bool | None) -> StepExecutionError:
    error = StepExecutionError("step stopped after its timeout of 1s", error_type=STEP_TIMEOUT)
    error.repeatable = repeatable
    return error


def test_a_timed_out_attempt_of_a_tool_not_declared_idempotent_is_not_retried(tmp_path: Path):
    result, calls = run_with(tmp_path, FLOW, lambda call: timed_out(False))
    assert isinstance(result, WorkflowExecutionError)
    assert len(calls) == 1
    assert "not retried: tool 'util.echo' is not declared idempotent" in str(result)


def test_a_timed_out_attempt_of_an_idempotent_tool_is_retried(tmp_path: Path):
    def outcome(call: ToolCall) -> Any:
        return timed_out(True) if call.attempt < 2 else {"result": "third time"}

    result, calls = run_with(tmp_path, FLOW, outcome)
    assert result == {"s": {"result": "third time"}}  # (no outputs declared: every step's)
    assert [c.attempt for c in calls] == [0, 1, 2]


def test_a_tools_own_error_is_retried_and_then_handled_by_on_error(tmp_path: Path):
    flow = FLOW.replace(
        "    inputs:", "    on_error: {continue: {result: fallback}}\n    inputs:"
    ).replace("steps:", "outputs: [{name: r, value: '{{steps.s.outputs.result}}'}]\nsteps:")

    def outcome(call: ToolCall) -> Any:
        return StepExecutionError("boom", error_type="ValueError")

    result, calls = run_with(tmp_path, flow, outcome)
    assert result == {"r": "fallback"}
    assert [c.attempt for c in calls] == [0, 1, 2, 3]  # the first try and 3 retries
