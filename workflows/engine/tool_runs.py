"""YAML steps: a ``tool`` step is handed to the tool runner (the node's scheduler, which
runs it on the local Ray or delegates it to a peer); a ``template`` step computes the
workflow's ``outputs`` from the steps' outputs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

from workflows.engine.host import StepHost
from workflows.engine.runstate import Run, Task
from workflows.engine.storage import MAX_PLACEMENT_BYTES
from workflows.errors import WorkflowError
from workflows.tool_steps import ToolCall, ToolOutcome

# placed(node, reason, detail): the runner placed the step (before each attempt); ``detail``
# (JSON-able, optional) says how it decided, and is journaled with the step
Placed = Callable[[str, str, Mapping[str, Any] | None], None]
ToolRunner = Callable[[ToolCall, Placed], Future[ToolOutcome]]


class ToolSteps:
    """The engine's part for tool and template steps (runs on the engine thread)."""

    def __init__(self, engine: StepHost, runner: ToolRunner | None) -> None:
        self._engine = engine
        self.runner = runner

    def start(self, run: Run, task: Task) -> None:
        """A YAML step: resolve its ``{{...}}`` references, then hand it to the external
        tool runner (the node's scheduler), or compute the workflow outputs."""
        from workflows.refs import resolve

        engine = self._engine
        step = task.step
        try:
            values = {d: engine._value(run, d) for d in step.deps}
            if step.kind == "template":
                template = step.args[0]
                value = dict(values) if template is None else resolve(template, run.kwargs, values)
            else:
                tool, version, template, declared = step.args[:4]
                options: dict[str, Any] = step.args[4] if len(step.args) > 4 else {}
                call_args = resolve(template, run.kwargs, values)
        except Exception as exc:
            engine._fail(run, exc, step.task_id)
            return
        engine._consumed(run, step)
        if step.kind == "template":
            engine._succeed(run, task, value)
            return
        if self.runner is None:
            engine._fail(
                run,
                WorkflowError(
                    f"step {step.task_id!r} needs tool {tool!r}, but this engine has no tool "
                    "runner (YAML workflows run on a hivemesh node)"
                ),
                step.task_id,
            )
            return
        wid, tid = run.workflow_id, step.task_id

        def placed(node: str, reason: str, detail: Mapping[str, Any] | None = None) -> None:
            task.node, task.reason = node, reason
            placement = _placement_text(detail)

            def write(db: Any) -> None:
                db.execute(
                    "INSERT INTO task(workflow_id, task_id, status, attempts, tool, node, reason,"
                    " start_time, placement) VALUES (?, ?, 'RUNNING', 1, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(workflow_id, task_id) DO UPDATE SET status = 'RUNNING',"
                    " attempts = task.attempts + 1, node = excluded.node,"
                    " reason = excluded.reason, start_time = excluded.start_time,"
                    " placement = excluded.placement",
                    (wid, tid, tool, node, reason, time.time(), placement),
                )

            engine._write(write)

        previous = task.node
        call = ToolCall(
            wid,
            tid,
            tool,
            version,
            call_args,
            tuple(declared),
            previous,
            peers=tuple(options.get("peers", ())),
            replicas=int(options.get("replicas", 1)),
            provider_wait_s=options.get("provider_wait_s"),
            workflow=options.get("workflow"),
        )
        fut = self.runner(call, placed)

        run.tool_calls[tid] = fut

        def done(f: Future[Any]) -> None:
            engine._post(lambda: self._on_done(run, task, f))

        fut.add_done_callback(done)

    def _on_done(self, run: Run, task: Task, fut: Future[Any]) -> None:
        engine = self._engine
        run.tool_calls.pop(task.step.task_id, None)
        if run.finished or fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            task.node = getattr(exc, "node", None) or task.node
            task.reason = getattr(exc, "reason", None) or task.reason
            engine._fail(run, exc, task.step.task_id)
            return
        outcome = fut.result()
        task.node, task.reason = outcome.node, outcome.reason
        engine._succeed(run, task, outcome.outputs)


def _placement_text(detail: Mapping[str, Any] | None) -> str | None:
    """The placement detail as journaled: compact JSON, or None if absent, not JSON-able or
    larger than :data:`MAX_PLACEMENT_BYTES`."""
    if not detail:
        return None
    try:
        text = json.dumps(detail, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        return None
    return text if len(text.encode()) <= MAX_PLACEMENT_BYTES else None
