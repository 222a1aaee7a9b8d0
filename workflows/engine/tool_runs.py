"""YAML steps: a ``tool`` step is handed to the tool runner (the node's scheduler, which
runs it on the local Ray or delegates it to a peer); a ``template`` step computes the
workflow's ``outputs`` from the steps' outputs.

Around each tool call the step's own rules apply, all on the engine thread: ``when`` (the
step is skipped, and so are the steps that need it), ``foreach`` (one call per item, at
most ``max_parallel`` at once, each item's result journaled as its own row ``STEP[i]`` so
a resumed workflow runs only the items that had not finished), ``retries`` (a timer per
wait), ``on_error`` (go on with default outputs, or run a fallback tool). ``timeout`` is
enforced by the runner, which stops the step and fails it with ``StepTimeout``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from workflows.engine import serde
from workflows.engine.host import StepHost
from workflows.engine.runstate import Run, Task
from workflows.engine.storage import MAX_PLACEMENT_BYTES, Storage
from workflows.errors import WorkflowError
from workflows.refs import DEFAULT_OUTPUT
from workflows.tool_steps import SKIPPED_REASON, StepExecutionError, ToolCall, ToolOutcome

# placed(node, reason, detail): the runner placed the step (before each attempt); ``detail``
# (JSON-able, optional) says how it decided, and is journaled with the step
Placed = Callable[[str, str, Mapping[str, Any] | None], None]
ToolRunner = Callable[[ToolCall, Placed], Future[ToolOutcome]]
# events(workflow_id, step, kind, reason): what the engine decided about a step on its own
# ("skipped", or "waiting" for a retry), for whoever shows progress (called on its thread)
StepEvents = Callable[[str, str, str, str], None]

log = logging.getLogger(__name__)

MAX_FOREACH_ITEMS = 10_000
_ITEM_ROW_RE = re.compile(r"^(.*)\[(\d+)\]$")


@dataclass(eq=False)
class _StepRun:
    """A tool step in progress: its calls (one, or one per foreach item)."""

    run: Run
    task: Task
    tool: str
    version: str | None
    declared: tuple[str, ...]
    options: dict[str, Any]
    args: list[dict[str, Any]]  # per call (one unless foreach)
    foreach: bool
    values: dict[str, Any] = field(default_factory=dict)  # its dependencies' outputs
    items: list[Any] | None = None  # a foreach step's list
    results: list[dict[str, Any] | None] = field(default_factory=list)
    previous: list[str | None] = field(default_factory=list)  # where each was running
    retries_used: list[int] = field(default_factory=list)
    next_index: int = 0
    running: int = 0
    nodes: set[str] = field(default_factory=set)


class ToolSteps:
    """The engine's part for tool and template steps (runs on the engine thread)."""

    def __init__(
        self, engine: StepHost, runner: ToolRunner | None, events: StepEvents | None = None
    ) -> None:
        self._engine = engine
        self.runner = runner
        self.events = events

    def _event(self, run: Run, step: str, kind: str, reason: str) -> None:
        if self.events is not None:
            try:
                self.events(run.workflow_id, step, kind, reason)
            except Exception:  # (progress is for people: it never stops a workflow)
                log.exception("step event handler failed")

    def start(self, run: Run, task: Task) -> None:
        """A YAML step: resolve its ``{{...}}`` references, then hand it to the external
        tool runner (the node's scheduler), or compute the workflow outputs."""
        from workflows.refs import SKIPPED, resolve

        engine = self._engine
        step = task.step
        try:
            values = {d: engine._value(run, d) for d in step.deps}
            if step.kind == "template":
                template = step.args[0]
                value = dict(values) if template is None else resolve(template, run.kwargs, values)
                engine._consumed(run, step)
                engine._succeed(run, task, value)
                return
            tool, version, template, declared = step.args[:4]
            options: dict[str, Any] = step.args[4] if len(step.args) > 4 else {}
            skipped = [d for d in step.deps if isinstance(values[d], dict) and SKIPPED in values[d]]
            if skipped:
                self._skip(run, task, f"step {skipped[0]!r} was skipped")
                return
            if options.get("when") is not None and not self._condition(run, options, values):
                self._skip(run, task, f"its condition {options['when']!r} was false")
                return
            foreach = options.get("foreach")
            items: list[Any] | None = None
            if foreach is not None:
                items = resolve(foreach["items"], run.kwargs, values)
                if not isinstance(items, list):
                    raise WorkflowError(
                        f"foreach of step {step.task_id!r} needs a list, not {type(items).__name__}"
                    )
                if len(items) > MAX_FOREACH_ITEMS:
                    raise WorkflowError(
                        f"foreach of step {step.task_id!r} has {len(items)} items, over "
                        f"{MAX_FOREACH_ITEMS}: split the list"
                    )
                args = [
                    resolve(template, run.kwargs, values, {"item": item, "index": i})
                    for i, item in enumerate(items)
                ]
            else:
                args = [resolve(template, run.kwargs, values)]
        except Exception as exc:
            engine._fail(run, exc, step.task_id)
            return
        engine._consumed(run, step)
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
        state = _StepRun(
            run,
            task,
            tool,
            version,
            tuple(declared),
            options,
            args,
            foreach is not None,
            values=values,
            items=items,
            results=[None] * len(args),
            # (a step, not an item, may have been running on a node before a restart)
            previous=[None if items is not None else task.node] * len(args),
            retries_used=[0] * len(args),
        )
        if state.foreach:
            self._load_items(state)
            if not args:
                self._gather(state)
                return
        self._fill(state)

    # -- conditions and skipping ---------------------------------------------------------

    def _condition(self, run: Run, options: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
        from workflows.expr import ExprError, evaluate, parse_expr

        text = options["when"]
        try:
            return bool(evaluate(parse_expr(text), run.kwargs, values))
        except ExprError as exc:
            raise WorkflowError(f"its condition {text!r} cannot be evaluated: {exc}") from None

    def _skip(self, run: Run, task: Task, why: str) -> None:
        from workflows.refs import SKIPPED

        engine = self._engine
        engine._consumed(run, task.step)
        task.node, task.reason = None, SKIPPED_REASON + why
        self._event(run, task.step.task_id, "skipped", task.reason)
        engine._succeed(run, task, {SKIPPED: why})

    # -- calls ---------------------------------------------------------------------------

    def _fill(self, state: _StepRun) -> None:
        """Start calls until ``max_parallel`` run (or every one has started)."""
        limit = None
        if state.foreach:
            limit = state.options["foreach"].get("max_parallel")
        while state.next_index < len(state.args) and (limit is None or state.running < limit):
            index = state.next_index
            state.next_index += 1
            if state.results[index] is not None:
                continue  # journaled by an earlier run of this workflow
            state.running += 1
            self._call(state, index)

    def _call(self, state: _StepRun, index: int, fallback: ToolCall | None = None) -> None:
        engine = self._engine
        run, task = state.run, state.task
        step = task.step
        wid, tid = run.workflow_id, step.task_id
        row_id = f"{tid}[{index}]" if state.foreach else tid
        options = state.options

        def placed(node: str, reason: str, detail: Mapping[str, Any] | None = None) -> None:
            if not state.foreach:
                task.node, task.reason = node, reason
            self._journal_placed(run, row_id, state.tool, node, reason, detail)

        if fallback is not None:
            call = fallback
        else:
            call = ToolCall(
                wid,
                row_id,
                state.tool,
                state.version,
                state.args[index],
                state.declared,
                # (a first attempt may re-attach where it ran before a restart; a retry not)
                state.previous[index] if state.retries_used[index] == 0 else None,
                peers=tuple(options.get("peers", ())),
                replicas=int(options.get("replicas", 1)),
                provider_wait_s=options.get("provider_wait_s"),
                timeout_s=options.get("timeout_s"),
                mode=str(options.get("mode", "auto")),
                resources=options.get("resources"),
                attempt=state.retries_used[index],
                package=options.get("package"),
                parameters=tuple(sorted(dict(options.get("parameters") or {}).items())),
                workflow=options.get("workflow"),
            )
        assert self.runner is not None
        fut = self.runner(call, placed)
        key = row_id if fallback is None else f"{row_id}/fallback"
        run.tool_calls[key] = fut

        def done(f: Future[Any]) -> None:
            engine._post(lambda: self._on_done(state, index, key, f, fallback is not None))

        fut.add_done_callback(done)

    def _on_done(
        self, state: _StepRun, index: int, key: str, fut: Future[Any], is_fallback: bool
    ) -> None:
        engine = self._engine
        run, task = state.run, state.task
        run.tool_calls.pop(key, None)
        if run.finished or fut.cancelled():
            return
        exc = fut.exception()
        if exc is None:
            outcome = fut.result()
            self._call_succeeded(state, index, outcome.outputs, outcome.node, outcome.reason)
            return
        node = getattr(exc, "node", None)
        if not state.foreach:
            task.node = node or task.node
            task.reason = getattr(exc, "reason", None) or task.reason
        if is_fallback:
            engine._fail(
                run,
                StepExecutionError(
                    f"its fallback failed too: {getattr(exc, 'message', None) or exc}",
                    node=node,
                ),
                task.step.task_id,
            )
            return
        retries = state.options.get("retries")
        error_type = getattr(exc, "error_type", None)
        if retries is not None and getattr(exc, "repeatable", None) is False:
            # stopped mid-way (its effect may have happened) and not declared idempotent:
            # not repeated behind the user's back
            retries = None
            exc = StepExecutionError(
                f"{getattr(exc, 'message', None) or exc} (not retried: tool {state.tool!r} is "
                "not declared idempotent, and the stopped attempt may have had its effect)",
                node=node,
                error_type=error_type,
            )
        if retries is not None and _retry_applies(retries, error_type):
            used = state.retries_used[index]
            if used < int(retries["max"]):
                state.retries_used[index] = used + 1
                delay = _delay(retries, used + 1)
                row_id = f"{task.step.task_id}[{index}]" if state.foreach else task.step.task_id
                message = _short(str(getattr(exc, "message", None) or exc), 160)
                self._event(
                    run,
                    row_id,
                    "waiting",
                    f"waiting: retry {used + 1} of {retries['max']} in {delay:g}s after: {message}",
                )

                def again() -> None:
                    if not run.finished:
                        self._call(state, index)

                engine._schedule(time.monotonic() + delay, again, run)
                return
        on_error = state.options.get("on_error")
        if on_error is not None:
            self._on_error(state, index, on_error, exc)
            return
        if state.foreach:
            exc = StepExecutionError(
                f"item {index} failed: {getattr(exc, 'message', None) or exc}",
                node=node,
                error_type=error_type,
            )
        engine._fail(run, exc, task.step.task_id)

    def _on_error(
        self, state: _StepRun, index: int, on_error: Mapping[str, Any], exc: BaseException
    ) -> None:
        from workflows.refs import resolve

        run = state.run
        message = str(getattr(exc, "message", None) or exc)
        error = {
            "type": getattr(exc, "error_type", None) or type(exc).__name__,
            "message": message,
        }
        values = state.values
        context: dict[str, Any] = {"error": error}
        if state.foreach:
            assert state.items is not None
            context.update(item=state.items[index], index=index)
        try:
            if "continue" in on_error:
                outputs = resolve(on_error["continue"], run.kwargs, values, context)
                names = state.declared or tuple(outputs)
                filled = {name: outputs.get(name) for name in names} if names else {}
                filled.update(outputs)
                self._call_succeeded(
                    state, index, filled, None, f"on_error continue after: {_short(message)}"
                )
                return
            spec = on_error["fallback"]
            args = resolve(spec["args"], run.kwargs, values, context)
        except Exception as failure:
            self._engine._fail(run, failure, state.task.step.task_id)
            return
        row_id = f"{state.task.step.task_id}[{index}]" if state.foreach else state.task.step.task_id
        call = ToolCall(
            run.workflow_id,
            f"{row_id}.fallback",
            spec["tool"],
            spec.get("version"),
            args,
            mode=str(state.options.get("mode", "auto")),
            peers=tuple(state.options.get("peers", ())),
        )
        self._call(state, index, call)

    def _call_succeeded(
        self,
        state: _StepRun,
        index: int,
        outputs: dict[str, Any],
        node: str | None,
        reason: str | None,
    ) -> None:
        engine = self._engine
        run, task = state.run, state.task
        state.running -= 1
        if not state.foreach:
            task.node, task.reason = node or task.node, reason or task.reason
            engine._succeed(run, task, outputs)
            return
        state.results[index] = outputs
        if node:
            state.nodes.add(node)
        self._journal_item(run, f"{task.step.task_id}[{index}]", outputs, node, reason)
        if all(result is not None for result in state.results):
            self._gather(state)
        else:
            self._fill(state)

    # -- foreach -------------------------------------------------------------------------

    def _gather(self, state: _StepRun) -> None:
        """Every item is done: the step's outputs are lists, one value per item."""
        results = [r or {} for r in state.results]
        names: list[str] = list(state.declared)
        for result in results:
            names += [name for name in result if name not in names]
        outputs: dict[str, Any] = {name: [result.get(name) for result in results] for name in names}
        if not results:
            outputs[DEFAULT_OUTPUT] = []  # (no item said what the outputs are: all empty)
        task = state.task
        nodes = sorted(state.nodes)
        task.node = nodes[0] if len(nodes) == 1 else (f"{len(nodes)} nodes" if nodes else None)
        task.reason = f"foreach: {len(results)} items"
        self._engine._succeed(state.run, task, outputs)

    def _load_items(self, state: _StepRun) -> None:
        """The items a previous run of this workflow finished (journaled as ``STEP[i]``)."""
        storage: Storage | None = getattr(self._engine, "storage", None)
        if storage is None:
            return
        tid = state.task.step.task_id
        for row in storage.list_tasks(state.run.workflow_id):
            match = _ITEM_ROW_RE.match(row.task_id)
            if match is None or match.group(1) != tid:
                continue
            index = int(match.group(2))
            if index >= len(state.results):
                continue
            if row.status == "RUNNING" and row.node:
                state.previous[index] = row.node  # ask the same node again (re-attach)
            if row.status == "SUCCESSFUL" and row.has_output:
                value = serde.loads(storage.load_value_bytes(row))
                if isinstance(value, dict):
                    state.results[index] = value
                    if row.node:
                        state.nodes.add(row.node)

    # -- the journal ---------------------------------------------------------------------

    def _journal_placed(
        self,
        run: Run,
        row_id: str,
        tool: str,
        node: str,
        reason: str,
        detail: Mapping[str, Any] | None,
    ) -> None:
        placement = _placement_text(detail)
        wid = run.workflow_id

        def write(db: Any) -> None:
            db.execute(
                "INSERT INTO task(workflow_id, task_id, status, attempts, tool, node, reason,"
                " start_time, placement) VALUES (?, ?, 'RUNNING', 1, ?, ?, ?, ?, ?)"
                " ON CONFLICT(workflow_id, task_id) DO UPDATE SET status = 'RUNNING',"
                " attempts = task.attempts + 1, node = excluded.node,"
                " reason = excluded.reason, start_time = excluded.start_time,"
                " placement = excluded.placement",
                (wid, row_id, tool, node, reason, time.time(), placement),
            )

        self._engine._write(write)

    def _journal_item(
        self, run: Run, row_id: str, outputs: dict[str, Any], node: str | None, reason: str | None
    ) -> None:
        """One foreach item's result, journaled as its own row (not needed for the step's
        correctness: a resumed workflow skips the items it finds here)."""
        data = serde.dumps(outputs)
        inline, digest, blob = Storage.split_value(data)
        wid = run.workflow_id
        now = time.time()

        def write(db: Any) -> None:
            db.execute(
                "INSERT INTO task(workflow_id, task_id, status, attempts, output, output_hash,"
                " start_time, end_time, node, reason) VALUES (?, ?, 'SUCCESSFUL', 1, ?, ?, ?,"
                " ?, ?, ?) ON CONFLICT(workflow_id, task_id) DO UPDATE SET"
                " status = 'SUCCESSFUL', output = excluded.output,"
                " output_hash = excluded.output_hash, end_time = excluded.end_time,"
                " node = COALESCE(excluded.node, task.node), reason = excluded.reason",
                (wid, row_id, inline, digest, now, now, node, reason),
            )

        self._engine._write(write, None, blob)


def _retry_applies(retries: Mapping[str, Any], error_type: str | None) -> bool:
    on = retries.get("on") or ()
    return not on or (error_type is not None and error_type in on)


def _delay(retries: Mapping[str, Any], retry: int) -> float:
    backoff = float(retries.get("backoff", 1.0))
    factor = float(retries.get("factor", 2.0))
    return float(min(3600.0, backoff * factor ** max(0, retry - 1)))


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
