"""The durable workflow engine: one engine thread per process drives every workflow.

The engine thread owns all workflow state; everything else talks to it through one queue:
API calls (``call``), Ray completions (``ObjectRef.future()`` callbacks), journal commits
(storage writer callbacks), timers (``sleep``) and events (an asyncio thread). A step's
output is committed before any step that depends on it is submitted; dependents get the
parent's ObjectRef, so values are not copied through the driver again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError, TaskCancelledError

from workflows import _serde
from workflows._graph import (
    Graph,
    InputRef,
    StepDef,
    StepRef,
    TaskIdAllocator,
    graph_from_dag,
    rename_graph,
    resolve_input,
)
from workflows._loop import EngineLoop
from workflows._outputs import ACTIVE, execution_error, load_task_output, stored_status
from workflows._results import ResultSlots
from workflows._runstate import (
    Run,
    Task,
    add_steps,
    no_longer_needed,
    resolve_alias,
    settle_done,
)
from workflows._step import ContinuationGraph, function_key, make_runner, remote_execute_step
from workflows._storage import (
    Storage,
    StorageError,
    WorkflowRow,
    owner_alive,
    this_process_owner,
)
from workflows._tool_runs import ToolRunner, ToolSteps
from workflows._waits import WaitSteps
from workflows.errors import (
    WorkflowCancellationError,
    WorkflowError,
    WorkflowExecutionError,
    WorkflowNotResumableError,
)
from workflows.status import WorkflowStatus

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0


class Engine(EngineLoop):
    def __init__(
        self,
        storage: Storage,
        *,
        max_running_workflows: int | None = None,
        max_pending_workflows: int | None = None,
        tool_runner: ToolRunner | None = None,
    ) -> None:
        super().__init__(storage)
        self.max_running = max_running_workflows
        self.max_pending = max_pending_workflows
        self.owner = this_process_owner()
        self._runs: dict[str, Run] = {}
        self._pending: deque[Run] = deque()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="workflows-io")
        self._tools = ToolSteps(self, tool_runner)
        self._waits = WaitSteps(self)
        self._results = ResultSlots()
        self._remotes: dict[Any, tuple[Any, bool]] = {}
        self._pin: list[Any] = []
        self._start_loop()
        self._schedule(time.monotonic() + HEARTBEAT_S, self._heartbeat)
        storage.on_failure(lambda exc: self._post(lambda: self._storage_failed(exc)))

    # -- plumbing ------------------------------------------------------------------------

    def _inflight(self, at_least: int) -> bool:
        inflight = 0
        for run in self._runs.values():
            inflight += len(run.running)
            if inflight >= at_least:
                return True
        return False

    def _handle(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "done":
            self._on_task_done(event[1], event[2], event[3])

    def _storage_failed(self, exc: BaseException) -> None:
        """The journal stopped working: nothing can be committed, so every live workflow
        fails now (without touching the journal) instead of hanging."""
        error = StorageError(f"the workflow journal failed: {exc}")
        self._batch.discard()
        for run in list(self._runs.values()):
            run.finished = True
            run.recorded.set()
            self._drop_timers(run)
            for ref in run.running.values():
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=False)
            run.running.clear()
            if not run.future.done():
                run.future.set_exception(error)
            for futs in run.waiters.values():
                for fut in futs:
                    if not fut.done():
                        fut.set_exception(error)
        self._runs.clear()
        self._pending.clear()

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stop_loop()
        if self.storage.failure is None:
            self.storage.flush()
        self._waits.close()
        self._pool.shutdown(wait=False)
        self._results.close()

    # -- starting ------------------------------------------------------------------------

    def start(
        self,
        dag: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        workflow_id: str,
        metadata: dict[str, Any],
    ) -> Future[Any]:
        """Start a new workflow, or resume it if the id exists (Ray Workflows semantics).
        Returns once the workflow is recorded in the journal."""
        fut = self.call(lambda: self._start(dag, args, kwargs, workflow_id, metadata))
        self._wait_recorded(workflow_id)
        return fut

    def _wait_recorded(self, workflow_id: str) -> None:
        run = self.call(lambda: self._runs.get(workflow_id))
        if run is not None:
            while not run.recorded.wait(0.5) and not run.finished:
                if self.storage.failure is not None:
                    return

    def _start(
        self,
        dag: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        workflow_id: str,
        metadata: dict[str, Any],
    ) -> Future[Any]:
        if workflow_id in self._runs:
            raise RuntimeError(f"workflow {workflow_id!r} is already running")
        row = self.storage.get_workflow(workflow_id)
        if row is not None:
            return self._resume(row)
        allocator = TaskIdAllocator()
        graph = graph_from_dag(dag, allocator)
        return self._create(graph, allocator, args, kwargs, workflow_id, metadata)

    def submit_graph(
        self,
        build: Callable[[], Graph],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        workflow_id: str,
        metadata: dict[str, Any],
    ) -> tuple[Future[Any], bool]:
        """Idempotent submit (the node's): an existing id is joined or resumed, never
        restarted. Returns (future of the output, whether it was created now)."""

        def go() -> tuple[Future[Any], bool]:
            run = self._runs.get(workflow_id)
            if run is not None:
                return run.future, False
            row = self.storage.get_workflow(workflow_id)
            if row is not None:
                status = stored_status(row, self.owner)
                if status in (WorkflowStatus.FAILED, WorkflowStatus.CANCELED):
                    fut: Future[Any] = Future()
                    fut.set_exception(WorkflowExecutionError(workflow_id, row.error_text))
                    return fut, False
                return self._resume(row), False
            graph = build()
            allocator = TaskIdAllocator({s.task_id for s in graph.steps})
            return self._create(graph, allocator, args, kwargs, workflow_id, metadata), True

        result = self.call(go)
        self._wait_recorded(workflow_id)
        return result

    def resume_interrupted(self) -> list[str]:
        """Resume every workflow in the storage that no live process runs (node start)."""

        def go() -> list[str]:
            resumed = []
            for row in self.storage.list_workflows():
                if row.workflow_id in self._runs:
                    continue
                if stored_status(row, self.owner) is not WorkflowStatus.RESUMABLE:
                    continue
                try:
                    self._resume(row)
                except Exception:
                    log.exception("cannot resume workflow %s", row.workflow_id)
                    continue
                resumed.append(row.workflow_id)
            return resumed

        return self.call(go)

    def _create(
        self,
        graph: Graph,
        allocator: TaskIdAllocator,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        workflow_id: str,
        metadata: dict[str, Any],
    ) -> Future[Any]:
        # ObjectRefs bound into the DAG or given as inputs are checkpointed by value
        graph_blob = _serde.dumps(graph, resolve_refs=True)
        inputs_blob = _serde.dumps((args, kwargs), resolve_refs=True)
        run = self._new_run(workflow_id, graph, args, kwargs, metadata, allocator)
        now = time.time()
        run.start_time = now
        status = self._admit(run)

        def insert(db: Any) -> bool:
            # atomic with the check: two processes that start one new id at once must
            # not both run it; the one that comes second resumes it instead
            found = db.execute("SELECT 1 FROM wf WHERE workflow_id = ?", (workflow_id,))
            if found.fetchone() is not None:
                return False
            db.execute(
                "INSERT INTO wf(workflow_id, status, graph, inputs, user_metadata,"
                " output_task, owner, heartbeat, created_at, start_time)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    workflow_id,
                    status.value,
                    graph_blob,
                    inputs_blob,
                    json.dumps(metadata),
                    graph.output,
                    self.owner,
                    now,
                    now,
                    now,
                ),
            )
            return True

        try:
            created = self.storage.transact(insert)
        except BaseException:
            self._unadmit(run)
            raise
        if not created:
            self._unadmit(run)
            existing = self.storage.get_workflow(workflow_id)
            if existing is None:
                raise WorkflowError(f"workflow {workflow_id!r} vanished while it was started")
            return self._resume(existing)
        run.recorded.set()
        if status is WorkflowStatus.RUNNING:
            self._kick(run)
        return run.future

    def _admit(self, run: Run) -> WorkflowStatus:
        active = sum(1 for r in self._runs.values() if r.status is WorkflowStatus.RUNNING)
        self._runs[run.workflow_id] = run
        if self.max_running is not None and active >= self.max_running:
            if self.max_pending is not None and len(self._pending) >= self.max_pending:
                del self._runs[run.workflow_id]
                raise queue.Full(f"workflow queue is full ({self.max_pending} pending workflows)")
            run.status = WorkflowStatus.PENDING
            self._pending.append(run)
            return WorkflowStatus.PENDING
        run.status = WorkflowStatus.RUNNING
        return WorkflowStatus.RUNNING

    def _unadmit(self, run: Run) -> None:
        """Undo ``_admit`` for a run that never started."""
        self._runs.pop(run.workflow_id, None)
        with contextlib.suppress(ValueError):
            self._pending.remove(run)

    def _new_run(
        self,
        workflow_id: str,
        graph: Graph,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        metadata: dict[str, Any],
        allocator: TaskIdAllocator,
    ) -> Run:
        run = Run(workflow_id, {}, graph.output, args, kwargs, metadata, allocator)
        add_steps(run, graph.steps)
        return run

    def _kick(self, run: Run) -> None:
        """Start what is ready: tasks with no pending dependencies."""
        run.status = WorkflowStatus.RUNNING
        ready = [t for t in run.tasks.values() if t.state == "WAITING" and t.pending == 0]
        for task in ready:
            self._start_task(run, task)
        self._maybe_finish(run)

    # -- resuming ------------------------------------------------------------------------

    def resume(self, workflow_id: str) -> Future[Any]:
        def go() -> Future[Any]:
            if workflow_id in self._runs:
                raise RuntimeError(f"workflow {workflow_id!r} is already running")
            row = self.storage.get_workflow(workflow_id)
            if row is None:
                raise WorkflowNotResumableError(workflow_id)
            return self._resume(row)

        return self.call(go)

    def _resume(self, row: WorkflowRow) -> Future[Any]:
        wid = row.workflow_id
        status = WorkflowStatus(row.status)
        if status in ACTIVE and row.owner != self.owner and owner_alive(row.owner, row.heartbeat):
            raise RuntimeError(f"workflow {wid!r} is running in another process ({row.owner})")
        if status is WorkflowStatus.SUCCESSFUL:
            fut: Future[Any] = Future()
            try:
                fut.set_result(self._load_output(wid, row.output_task or ""))
            except BaseException as exc:
                fut.set_exception(exc)
            return fut
        graph: Graph = _serde.loads(row.graph)
        args, kwargs = _serde.loads(row.inputs)
        allocator = TaskIdAllocator({s.task_id for s in graph.steps})
        run = self._new_run(wid, graph, args, kwargs, row.user_metadata, allocator)
        run.start_time = row.start_time or time.time()
        rows = {r.task_id: r for r in self.storage.list_tasks(wid)}
        # expand stored continuations (iteratively: they can nest)
        todo = [t for t in list(run.tasks) if t in rows]
        while todo:
            tid = todo.pop()
            r = rows[tid]
            task = run.tasks[tid]
            if r.status == "SUCCESSFUL" and r.has_output:
                task.state = "DONE"
                task.stored = True
            elif r.status == "CONTINUED" and r.continuation is not None:
                sub: Graph = _serde.loads(r.continuation)
                for s in sub.steps:
                    allocator.allocate(s.task_id)
                add_steps(run, sub.steps)
                task.state = "CONTINUED"
                task.alias = sub.output
                run.tasks[sub.output].alias_parents.append(tid)
                todo.extend(s.task_id for s in sub.steps if s.task_id in rows)
            elif r.timer_end is not None:
                task.timer_end = r.timer_end
            elif r.status == "RUNNING" and r.node:
                task.node = r.node  # a tool step: ask the same node again (re-attach)
        # settle dependency counts for what is already done (each task exactly once)
        settled: set[str] = set()
        for task in [t for t in run.tasks.values() if t.state == "DONE"]:
            settle_done(run, task, settled)
        for task in no_longer_needed(run):
            settle_done(run, task, settled)
        self._admit(run)

        def claim(db: Any) -> None:
            # check and take ownership in one transaction: of two processes resuming
            # this workflow at once, the second sees the first as its live owner
            found = db.execute(
                "SELECT status, owner, heartbeat FROM wf WHERE workflow_id = ?", (wid,)
            ).fetchone()
            if found is None:
                raise WorkflowNotResumableError(wid)
            now_status, owner, heartbeat = found
            if (
                WorkflowStatus(now_status) in ACTIVE
                and owner != self.owner
                and owner_alive(owner, heartbeat)
            ):
                raise RuntimeError(f"workflow {wid!r} is running in another process ({owner})")
            db.execute(
                "UPDATE wf SET status = ?, owner = ?, heartbeat = ?, error = NULL,"
                " error_text = NULL, end_time = NULL WHERE workflow_id = ?",
                (run.status.value, self.owner, time.time(), wid),
            )

        try:
            self.storage.transact(claim)
        except BaseException:
            self._unadmit(run)
            raise
        run.recorded.set()
        if run.status is WorkflowStatus.RUNNING:
            self._kick(run)
        return run.future

    def _value_ref(self, run: Run, tid: str) -> ray.ObjectRef:
        task = resolve_alias(run, tid)
        if task.ref is None:
            if not task.has_value:
                task.value = self._load_output(run.workflow_id, task.step.task_id)
                task.has_value = True
            task.ref = ray.put(task.value)
        return task.ref

    def _value(self, run: Run, tid: str) -> Any:
        task = resolve_alias(run, tid)
        if not task.has_value:
            if task.ref is not None:
                task.value = ray.get(task.ref)
            else:
                task.value = self._load_output(run.workflow_id, task.step.task_id)
            task.has_value = True
        return task.value

    def _materialize(self, run: Run, value: Any, *, as_refs: bool) -> Any:
        if isinstance(value, StepRef):
            return (
                self._value_ref(run, value.task_id) if as_refs else self._value(run, value.task_id)
            )
        if isinstance(value, InputRef):
            return resolve_input(value, run.args, run.kwargs)
        if isinstance(value, list):
            return [self._materialize(run, v, as_refs=as_refs) for v in value]
        if isinstance(value, tuple):
            return tuple(self._materialize(run, v, as_refs=as_refs) for v in value)
        if isinstance(value, dict):
            return {k: self._materialize(run, v, as_refs=as_refs) for k, v in value.items()}
        return value

    def _consumed(self, run: Run, step: StepDef) -> None:
        for dep in step.deps:
            task = resolve_alias(run, dep)
            parent = run.tasks[dep]
            parent.consumers_left -= 1
            # nothing else will read it through us; let Ray free it when its readers end
            if (
                parent.consumers_left <= 0
                and dep != run.output
                and not parent.alias_parents
                and task is parent
                and task.step.kind == "task"
            ):
                task.ref = None
                if task.has_value and dep not in run.waiters:
                    task.value = None
                    task.has_value = False

    def _start_task(self, run: Run, task: Task) -> None:
        if run.finished:
            return
        step = task.step
        task.state = "RUNNING"
        task.started_at = time.time()
        if step.kind in ("tool", "template"):
            self._tools.start(run, task)
            return
        try:
            if step.kind == "task":
                args = tuple(self._materialize(run, a, as_refs=True) for a in step.args)
                kwargs = {
                    k: self._materialize(run, v, as_refs=True) for k, v in step.kwargs.items()
                }
            else:
                args = tuple(self._materialize(run, a, as_refs=False) for a in step.args)
                kwargs = {
                    k: self._materialize(run, v, as_refs=False) for k, v in step.kwargs.items()
                }
        except Exception as exc:
            self._fail(run, exc, step.task_id)
            return
        self._consumed(run, step)
        if step.kind == "task":
            remote, pass_func = self._remote_for(step)
            ctx = (run.workflow_id, step.task_id)
            if pass_func:
                ref = remote.remote(step.func, ctx, *args, **kwargs)
            else:
                ref = remote.remote(ctx, *args, **kwargs)
            task.ref = ref
            run.running[step.task_id] = ref
            q = self._q
            tid = step.task_id
            # _on_completed: what ObjectRef.future() uses, without a Future per task
            ref._on_completed(lambda result: q.put(("done", run, tid, result)))
        elif step.kind == "sleep":
            self._waits.start_sleep(run, task, float(args[0]))
        else:
            self._waits.start_event(run, task, args)

    def _remote_for(self, step: StepDef) -> tuple[Any, bool]:
        """(Ray remote function, whether to pass the step function as first argument).

        A function gets its own exported task body, so workers cache it like any Ray
        task; closures fall back to the generic body that takes the function as argument.
        Both are cached per options (``.options()`` is costly)."""
        fkey = function_key(step.func)
        try:
            opts_key: Any = tuple(sorted(step.ray_options.items()))
            hash(opts_key)
        except TypeError:
            opts_key = id(step.ray_options)
        retry = step.retry_exceptions
        key = (fkey, opts_key, step.max_retries, tuple(retry) if isinstance(retry, list) else retry)
        cached = self._remotes.get(key)
        if cached is not None:
            return cached
        opts = dict(step.ray_options)
        opts["max_retries"] = step.max_retries
        opts["retry_exceptions"] = step.retry_exceptions
        if fkey is None:
            entry = (remote_execute_step.options(**opts), True)
        else:
            entry = (ray.remote(make_runner(step.func)).options(**opts), False)
        if isinstance(opts_key, int):  # unhashable options: keep the dict alive with the key
            self._pin.append(step.ray_options)
        self._remotes[key] = entry
        return entry

    def _on_task_done(self, run: Run, tid: str, result: Any) -> None:
        run.running.pop(tid, None)
        if run.finished:
            return
        task = run.tasks[tid]
        step = task.step
        exc = result if isinstance(result, RayError) else None
        if exc is None:
            value = result
            if isinstance(value, ContinuationGraph):
                self._continue(run, task, value.graph)
                return
            if step.catch_exceptions:
                task.ref = None
                value = (value, None)
            self._succeed(run, task, value)
            return
        if isinstance(exc, TaskCancelledError):
            self._fail(run, exc, tid)
            return
        cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
        if step.catch_exceptions and isinstance(exc, RayTaskError):
            task.ref = None
            self._succeed(run, task, (None, cause))
            return
        self._fail(run, cause, tid)

    def _succeed(
        self, run: Run, task: Task, value: Any, on_commit: Callable[[], None] | None = None
    ) -> None:
        step = task.step
        keep = (
            step.task_id == run.output
            or bool(task.alias_parents)
            or step.task_id in run.waiters
            or task.ref is None
        )
        if keep:
            task.value = value
            task.has_value = True
        tid = step.task_id
        commit = on_commit or (lambda: self._on_committed(run, tid))
        if step.checkpoint is False:
            task.value = value
            task.has_value = True
            commit()
            return
        try:
            data = _serde.dumps(value)
        except _serde.HasObjectRefs:
            # ObjectRefs inside: resolve them off the engine thread, then commit
            def slow() -> None:
                try:
                    blob = _serde.dumps(value, resolve_refs=True)
                except Exception as exc:
                    error = exc
                    self._post(lambda: self._fail(run, error, tid))
                    return
                self._write_output(run, task, blob, commit)

            self._pool.submit(slow)
            return
        except Exception as exc:
            self._fail(
                run, WorkflowError(f"the output of task {tid!r} cannot be checkpointed: {exc}"), tid
            )
            return
        self._write_output(run, task, data, commit)

    def _write_output(
        self, run: Run, task: Task, data: bytes, on_commit: Callable[[], None]
    ) -> None:
        step = task.step
        inline, digest, blob = Storage.split_value(data)
        row = (
            run.workflow_id,
            step.task_id,
            inline,
            digest,
            # options and metadata live in the stored graph; not repeated per row
            None,
            None,
            task.started_at,
            time.time(),
            step.metadata.get("tool"),
            task.node,
            task.reason,
        )

        def write(db: Any) -> None:
            db.execute(
                "INSERT INTO task(workflow_id, task_id, status, attempts, output, output_hash,"
                " options, user_metadata, start_time, end_time, tool, node, reason)"
                " VALUES (?, ?, 'SUCCESSFUL', 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(workflow_id, task_id) DO UPDATE SET status = 'SUCCESSFUL',"
                " attempts = MAX(task.attempts, 1), output = excluded.output,"
                " tool = excluded.tool, node = excluded.node, reason = excluded.reason,"
                " output_hash = excluded.output_hash, options = excluded.options,"
                " user_metadata = excluded.user_metadata, end_time = excluded.end_time,"
                " start_time = COALESCE(task.start_time, excluded.start_time)",
                row,
            )

        self._write(write, on_commit, blob)

    def _continue(self, run: Run, task: Task, local: Graph) -> None:
        graph = rename_graph(local, run.allocator)
        # as in Ray Workflows: where the user set nothing, the continuation's steps
        # inherit the returning step's checkpoint, and its output step catch_exceptions
        parent = task.step
        for step in graph.steps:
            if step.checkpoint is None:
                step.checkpoint = parent.checkpoint is not False
            if step.task_id == graph.output and step.catch_exceptions is None:
                step.catch_exceptions = bool(parent.catch_exceptions)
        tid = task.step.task_id
        blob = _serde.dumps(graph)
        step = task.step

        def write(db: Any) -> None:
            db.execute(
                "INSERT INTO task(workflow_id, task_id, status, continuation, options,"
                " user_metadata, start_time) VALUES (?, ?, 'CONTINUED', ?, ?, ?, ?)"
                " ON CONFLICT(workflow_id, task_id) DO UPDATE SET status = 'CONTINUED',"
                " continuation = excluded.continuation",
                (
                    run.workflow_id,
                    tid,
                    blob,
                    json.dumps(step.options_record()),
                    json.dumps(step.metadata),
                    task.started_at,
                ),
            )

        task.ref = None
        self._write(write, lambda: self._expand(run, task, graph))

    def _expand(self, run: Run, task: Task, graph: Graph) -> None:
        if run.finished:
            return
        add_steps(run, graph.steps)
        task.state = "CONTINUED"
        task.alias = graph.output
        run.tasks[graph.output].alias_parents.append(task.step.task_id)
        for step in graph.steps:
            sub = run.tasks[step.task_id]
            if sub.pending == 0 and sub.state == "WAITING":
                self._start_task(run, sub)

    def _on_committed(self, run: Run, tid: str) -> None:
        if run.finished:
            return
        self._mark_done(run, run.tasks[tid])
        self._maybe_finish(run)

    def _mark_done(self, run: Run, task: Task) -> None:
        stack = [task]
        while stack:
            t = stack.pop()
            t.state = "DONE"
            tid = t.step.task_id
            for fut in run.waiters.pop(tid, []):
                try:
                    fut.set_result(self._value(run, tid))
                except BaseException as exc:
                    fut.set_exception(exc)
            for dep in t.dependents:
                d = run.tasks[dep]
                d.pending -= 1
                if d.pending == 0 and d.state == "WAITING":
                    self._start_task(run, d)
            for pid in t.alias_parents:
                stack.append(run.tasks[pid])

    def _maybe_finish(self, run: Run) -> None:
        if run.finished or run.tasks[run.output].state != "DONE":
            return
        run.finished = True
        try:
            value = self._value(run, run.output)
        except BaseException as exc:
            run.finished = False
            self._fail(run, exc, run.output)
            return
        wid = run.workflow_id

        def write(db: Any) -> None:
            db.execute(
                "UPDATE wf SET status = 'SUCCESSFUL', output_task = ?, end_time = ?"
                " WHERE workflow_id = ?",
                (run.output, time.time(), wid),
            )

        self._write(write, lambda: self._close(run, value, None))

    def _fail(
        self,
        run: Run,
        cause: BaseException,
        tid: str | None,
        status: WorkflowStatus = WorkflowStatus.FAILED,
    ) -> None:
        if run.finished:
            return
        run.finished = True
        running = list(run.running.values())
        run.running.clear()
        if running:
            # off the engine thread: a polite cancel, then the worker is killed after a
            # grace period (a polite cancel cannot interrupt a step blocked in C code)
            self._pool.submit(_stop_tasks, running)
        for poll in run.polls:  # event listeners still waiting
            poll.cancel()
        for call in run.tool_calls.values():  # tool steps: the runner stops them
            call.cancel()
        run.tool_calls.clear()
        wid = run.workflow_id
        if status is WorkflowStatus.CANCELED:
            error: BaseException = WorkflowCancellationError(wid)
            text = "canceled"
        elif (
            tid is not None
            and run.tasks.get(tid) is not None
            and run.tasks[tid].step.kind in ("tool", "template")
        ):
            # YAML steps: the message is for the person who wrote the YAML
            text = f"step {tid!r} failed: {getattr(cause, 'message', None) or cause}"
            error = WorkflowExecutionError(wid, text, cause)
        else:
            where = f"task {tid!r}: " if tid else ""
            error = execution_error(wid, cause, f"{where}{type(cause).__name__}: {cause}")
            text = f"{where}{type(cause).__name__}: {cause}"
        task = run.tasks.get(tid) if tid is not None else None
        node = task.node if task is not None else None
        reason = task.reason if task is not None else None
        step_error = getattr(cause, "message", None) or str(cause)
        try:
            blob: bytes | None = _serde.dumps(cause)
        except Exception:
            blob = None

        def write(db: Any) -> None:
            db.execute(
                "UPDATE wf SET status = ?, error = ?, error_text = ?, end_time = ?"
                " WHERE workflow_id = ?",
                (status.value, blob, text, time.time(), wid),
            )
            if tid is not None and status is WorkflowStatus.FAILED:
                db.execute(
                    "INSERT INTO task(workflow_id, task_id, status, error_text, node, reason)"
                    " VALUES (?, ?, 'FAILED', ?, ?, ?) ON CONFLICT(workflow_id, task_id) DO"
                    " UPDATE SET status = 'FAILED', error_text = excluded.error_text,"
                    " node = COALESCE(excluded.node, task.node),"
                    " reason = COALESCE(excluded.reason, task.reason)",
                    (wid, tid, step_error, node, reason),
                )

        self._write(write, lambda: self._close(run, None, error))

    def _close(self, run: Run, value: Any, error: BaseException | None) -> None:
        self._runs.pop(run.workflow_id, None)
        self._drop_timers(run)
        for tid, futs in run.waiters.items():
            for fut in futs:
                fut.set_exception(
                    error
                    or ValueError(f"workflow {run.workflow_id!r} finished without a task {tid!r}")
                )
        run.waiters.clear()
        if error is None:
            run.future.set_result(value)
        else:
            run.future.set_exception(error)
        while self._pending and (
            self.max_running is None
            or sum(1 for r in self._runs.values() if r.status is WorkflowStatus.RUNNING)
            < self.max_running
        ):
            nxt = self._pending.popleft()
            wid = nxt.workflow_id

            def mark(db: Any, wid: str = wid) -> None:
                db.execute("UPDATE wf SET status = 'RUNNING' WHERE workflow_id = ?", (wid,))

            self._write(mark)
            self._kick(nxt)

    # -- control -------------------------------------------------------------------------

    def cancel(self, workflow_id: str) -> bool:
        def go() -> bool:
            run = self._runs.get(workflow_id)
            if run is None:
                return False
            if run in self._pending:
                self._pending.remove(run)
            self._fail(run, WorkflowCancellationError(workflow_id), None, WorkflowStatus.CANCELED)
            return True

        return bool(self.call(go))

    def active_count(self) -> int:
        return int(self.call(lambda: len(self._runs)))

    def live_status(self, workflow_id: str) -> WorkflowStatus | None:
        def go() -> WorkflowStatus | None:
            run = self._runs.get(workflow_id)
            return None if run is None else run.status

        return self.call(go)

    def live_future(self, workflow_id: str) -> Future[Any] | None:
        return self.call(lambda: getattr(self._runs.get(workflow_id), "future", None))

    def task_future(self, workflow_id: str, task_id: str) -> Future[Any] | None:
        """A future for a task of a live workflow (it may not exist yet)."""

        def go() -> Future[Any] | None:
            run = self._runs.get(workflow_id)
            if run is None:
                return None
            fut: Future[Any] = Future()
            task = run.tasks.get(task_id)
            if task is not None and task.state == "DONE":
                fut.set_result(self._value(run, task_id))
            else:
                run.waiters.setdefault(task_id, []).append(fut)
            return fut

        return self.call(go)

    def result_ref(self, workflow_id: str, fut: Future[Any]) -> ray.ObjectRef:
        """An ObjectRef that resolves like ``fut`` (for the ``*_async`` API)."""
        return self._results.ref_for(workflow_id, fut)

    def _heartbeat(self) -> None:
        owned = [wid for wid in self._runs]
        if owned:
            now = time.time()

            def beat(db: Any) -> None:
                db.executemany(
                    "UPDATE wf SET heartbeat = ? WHERE workflow_id = ?",
                    [(now, wid) for wid in owned],
                )

            self._write(beat)
            # another process may have canceled one of ours through the storage
            for wid in owned:
                row = self.storage.get_workflow(wid)
                run = self._runs.get(wid)
                if row is not None and run is not None and row.status == "CANCELED":
                    self._fail(run, WorkflowCancellationError(wid), None, WorkflowStatus.CANCELED)
        self._schedule(time.monotonic() + HEARTBEAT_S, self._heartbeat)

    # -- stored outputs ------------------------------------------------------------------

    def _load_output(self, workflow_id: str, task_id: str) -> Any:
        return load_task_output(self.storage, workflow_id, task_id)


def _stop_tasks(refs: list[ray.ObjectRef]) -> None:
    from workflows.ray_tools import stop_tasks

    stop_tasks(refs)
