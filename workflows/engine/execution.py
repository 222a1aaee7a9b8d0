"""Running a workflow's steps: submit what is ready, commit what finished, continue.

A step's output is committed to the journal before any step that depends on it is
submitted; dependents get the parent's ObjectRef, so values are not copied through the
driver again. Ray completions arrive from :mod:`workflows.engine.completions` as ``("done", ...)``
events on the engine thread.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError, TaskCancelledError

from workflows.engine import serde
from workflows.engine.completions import Completions
from workflows.engine.graph import (
    ATOMS,
    Graph,
    InputRef,
    StepDef,
    StepRef,
    rename_graph,
    resolve_input,
)
from workflows.engine.limits import StepLimits, bound_error_text
from workflows.engine.liveness import ray_session
from workflows.engine.loop import EngineLoop
from workflows.engine.outputs import execution_error, load_task_output
from workflows.engine.runstate import (
    NO_RESULT,
    Run,
    Task,
    add_steps,
    continuation_subtree,
    resolve_alias,
)
from workflows.engine.step import (
    ContinuationGraph,
    ParentContinued,
    function_key,
    make_runner,
    remote_execute_step,
)
from workflows.engine.storage import Storage
from workflows.engine.tool_runs import StepEvents, ToolRunner, ToolSteps
from workflows.engine.waits import WaitSteps
from workflows.errors import (
    StepOutputTooLargeError,
    WorkflowCancellationError,
    WorkflowError,
    WorkflowExecutionError,
)
from workflows.status import WorkflowStatus

log = logging.getLogger(__name__)

BURST = 16  # starting at least this many tasks at once holds the completion watcher
PIPELINE_WINDOW = 64
"""How many steps of a workflow may be submitted before the steps they read have committed
(0: none). Each reads the ObjectRefs of what it reads, as plain Ray chains tasks; results
are still committed strictly in dependency order (see :meth:`StepExecution._pipeline`).
After a crash, at most this many steps beyond the committed ones may have run already and
run again (steps run at least once; a committed one never runs again)."""


MAX_INFLIGHT_TASKS = 2048
"""At most this many steps' Ray tasks submitted and not finished, over all of the engine's
runs; more ready steps wait in the engine (``HELD``), in the order they became ready, and
go to Ray as running ones finish. A 100,000-step fan-out handed to Ray at once costs Ray
about 14 KB per waiting task (+1.4 GB measured, plain Ray the same) and runs no sooner on a
cluster that runs a few at a time. Pipelined steps (at most ``PIPELINE_WINDOW`` per run)
are not held."""
INLINE_OUTPUT_BYTES = 512
"""A task step's output at most this big (pickled) is kept in the driver once committed and
passed to the steps that read it as a value, not an ObjectRef (see ``Task.inline``)."""
HELD_STALL_S = 1.0
"""While steps are held, the engine asks Ray this often whether CPUs are idle: tasks blocked
on work held here (a step that waits for another workflow of this engine) give theirs back,
and a cluster larger than the bound has some to spare; as many more held steps as there are
idle CPUs go to Ray (beyond the bound, until no step is held)."""


class StepExecution(EngineLoop):
    """The live runs of this process and the running of their steps. :class:`Engine`
    adds starting, resuming, admission and control on top."""

    def __init__(
        self,
        storage: Storage,
        tool_runner: ToolRunner | None,
        limits: StepLimits,
        step_events: StepEvents | None = None,
        pipeline_window: int = PIPELINE_WINDOW,
        max_inflight_tasks: int = MAX_INFLIGHT_TASKS,
    ) -> None:
        super().__init__(storage)
        self.limits = limits
        self.pipeline_window = pipeline_window
        self.max_inflight_tasks = max_inflight_tasks
        # ready task steps beyond max_inflight_tasks, oldest first (see _hold)
        self._held: collections.deque[tuple[Run, Task]] = collections.deque()
        self._submitted = 0  # tasks submitted: exact after _count_submitted, else above
        self._relief = 0  # held steps let through beyond the bound (HELD_STALL_S)
        self.held_stall_s = HELD_STALL_S
        self._stall_check = False  # an idle-CPU check is scheduled
        # code of step functions that returned a continuation: their readers are not
        # pipelined (they would only be started again; fib-like recursions do it each time)
        self._continuing: set[Any] = set()
        # the Ray the engine runs on: a ray.shutdown() under it ends it (ray_lost)
        self.ray_session = ray_session()
        self._runs: dict[str, Run] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="workflows-io")
        self._tools = ToolSteps(self, tool_runner, step_events)
        self._waits = WaitSteps(self)
        self._remotes: dict[Any, tuple[Any, bool]] = {}
        self._last_remote: tuple[Any, dict[str, Any], tuple[Any, bool]] | None = None
        self._pin: list[Any] = []
        # output rows of this turn not yet applied: more join them (see _write_output)
        self._open_rows: _OutputRows | None = None
        q = self._q
        self._completions = Completions(lambda items: q.put(("done", items)))

    def _run_closed(self, run: Run) -> None:
        """A run ended (its final record is committed): room for a pending one."""

    def ray_lost(self) -> bool:
        """The Ray this engine started on was shut down (``ray.shutdown()``, perhaps
        followed by a new ``ray.init()``): its steps died with it."""
        return self.ray_session is not None and ray_session() != self.ray_session

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
            for (run, tid), result in event[1]:
                self._on_task_done(run, tid, result)
            if self._held:
                self._release_held()

    # -- held steps (MAX_INFLIGHT_TASKS) -------------------------------------------------

    def _count_submitted(self) -> int:
        self._submitted = sum(len(run.running) for run in self._runs.values())
        return self._submitted

    def _hold(self, run: Run, task: Task) -> bool:
        """Hold ``task`` (ready, not started) if the engine has as many tasks in Ray as it
        may; True if held."""
        bound = self.max_inflight_tasks + self._relief
        # (the running count only grows between recounts: below the bound, no recount)
        if not self._held and (self._submitted < bound or self._count_submitted() < bound):
            return False
        task.state = "HELD"
        self._held.append((run, task))
        if not self._stall_check:
            self._stall_check = True
            self._schedule(time.monotonic() + self.held_stall_s, self._check_held)
        return True

    def _release_held(self) -> None:
        """Submit held steps while there is room, oldest first."""
        room = self.max_inflight_tasks + self._relief - self._count_submitted()
        if room <= 0:
            return
        held = self._held
        started: list[tuple[Run, Task]] = []
        while held and len(started) < room:
            run, task = held.popleft()
            if task.state == "HELD" and not run.finished:
                task.state = "WAITING"
                started.append((run, task))
        if not held:
            self._relief = 0
        with self._burst(len(started)):
            for run, task in started:
                self._start_task(run, task, may_hold=False)

    def _check_held(self) -> None:
        """Steps are held: if Ray has idle CPUs meanwhile, the submitted tasks do not keep
        the cluster busy (they wait on something, perhaps on what is held, or the cluster
        is larger than the bound): let as many more through."""
        self._stall_check = False
        if not self._held:
            return
        idle = self._ray_idle_cpus()
        if idle >= 1:
            more = int(idle)
            self._relief += more
            log.info(
                "workflow engine: %d steps held and %d in Ray while Ray has idle CPUs; "
                "submitting %d more",
                len(self._held),
                self._count_submitted(),
                more,
            )
        self._release_held()
        if self._held:
            self._stall_check = True
            self._schedule(time.monotonic() + self.held_stall_s, self._check_held)

    @staticmethod
    def _ray_idle_cpus() -> float:
        try:
            return float(ray.available_resources().get("CPU", 0.0))
        except Exception:  # Ray going away: nothing to let through
            return 0.0

    def _drop_held(self, run: Run) -> None:
        """A run ended: its held steps never start."""
        if self._held:
            self._held = collections.deque(e for e in self._held if e[0] is not run)

    def _value_ref(self, run: Run, tid: str) -> ray.ObjectRef:
        task = resolve_alias(run, tid)
        if task.ref is None:
            if not task.has_value:
                task.value = self._load_output(run.workflow_id, task.step.task_id)
                task.has_value = True
            task.ref = ray.put(task.value)
        return task.ref

    def _task_arg(self, run: Run, value: Any) -> Any:
        """A task step's argument: a step output as its ObjectRef, or, at the top level (Ray
        resolves a top-level ObjectRef to its value before the task runs, so the task sees
        the same), a small committed output as the value itself (``Task.inline``)."""
        if isinstance(value, StepRef):
            task = resolve_alias(run, value.task_id)
            if task.ref is None and task.inline and task.has_value:
                return task.value
        return self._materialize(run, value, as_refs=True)

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
        if type(value) in ATOMS:
            return value
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
        if isinstance(value, (set, frozenset)):
            return type(value)(self._materialize(run, v, as_refs=as_refs) for v in value)
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

    def _start_task(
        self, run: Run, task: Task, pipeline: bool = True, may_hold: bool = True
    ) -> None:
        if run.finished:
            return
        step = task.step
        if step.kind == "task" and pipeline and may_hold and self._hold(run, task):
            return  # (a pipelined step is never held: it reads a running parent's ref)
        task.state = "RUNNING"
        task.started_at = time.time()
        if step.kind in ("tool", "template"):
            self._tools.start(run, task)
            return
        try:
            if step.kind == "task":
                args = tuple(self._task_arg(run, a) for a in step.args)
                kwargs = {k: self._task_arg(run, v) for k, v in step.kwargs.items()}
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
            ctx = [run.workflow_id, step.task_id]
            if pass_func:
                ref = remote.remote(step.func, ctx, *args, **kwargs)
            else:
                ref = remote.remote(ctx, *args, **kwargs)
            task.ref = ref
            run.running[step.task_id] = ref
            self._submitted += 1
            self._completions.watch(ref, (run, step.task_id))
            if pipeline and self.pipeline_window > 0 and task.dependents:
                self._pipeline(run, task)
        elif step.kind == "sleep":
            self._waits.start_sleep(run, task, float(args[0]))
        else:
            self._waits.start_event(run, task, args)

    def _pipeline(self, run: Run, first: Task) -> None:
        """Submit the readers of ``first`` (just submitted) now, with the ObjectRefs of what
        they read, and theirs in turn: a chain goes to Ray at once, as a plain Ray chain
        does, and its steps run back to back without a round trip through the engine.

        Durability is unchanged: a result is committed only after every result it depends
        on (:meth:`_on_task_done` holds it in ``early_result`` until then), so no committed
        result ever depends on an uncommitted one, and a crash reruns what follows the
        committed prefix (steps run at least once, as always). Only plain task steps that
        read their inputs as top-level arguments are pipelined, and only on plain task
        steps: not on ``catch_exceptions`` steps (their output is not the task's return),
        sleeps, events or tool steps. A parent that returns a continuation is found by the
        reader's task before its body runs (:class:`ParentContinued`), which then starts
        again the usual way once the continuation's output is known."""
        todo = [first]
        while todo:
            parent = todo.pop()
            for tid in parent.dependents:
                reader = run.tasks[tid]
                if reader.state != "WAITING" or reader.pending == 0:
                    continue
                if not _pipelinable(run, reader, self._continuing):
                    continue
                if run.early >= self.pipeline_window:
                    run.blocked.append(parent)  # (again once a pipelined step is done)
                    break
                reader.early = True
                run.early += 1
                self._start_task(run, reader, pipeline=False)
                if reader.state == "RUNNING":
                    todo.append(reader)
                if run.finished:
                    return

    def _remote_for(self, step: StepDef) -> tuple[Any, bool]:
        """(Ray remote function, whether to pass the step function as first argument).

        A function gets its own exported task body, so workers cache it like any Ray
        task; closures fall back to the generic body that takes the function as argument.
        Both are cached per options (``.options()`` is costly). The last answer is kept
        by the identity of the function and of the options dict, which the steps of one
        graph share (a fan-out's or a chain's steps skip the key)."""
        last = self._last_remote
        if last is not None and last[0] is step.func and last[1] is step.ray_options:
            return last[2]
        entry = self._remote_by_key(step)
        self._last_remote = (step.func, step.ray_options, entry)
        return entry

    def _remote_by_key(self, step: StepDef) -> tuple[Any, bool]:
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
        if task.state == "ABANDONED":
            return
        if task.early:
            if isinstance(result, RayTaskError) and isinstance(result.cause, ParentContinued):
                self._unpipeline(run, task)
                return
            if task.pending > 0:
                task.early_result = result  # committed once what it read is
                return
        step = task.step
        exc = result if isinstance(result, RayError) else None
        if exc is not None and not isinstance(exc, RayTaskError) and self.ray_lost():
            return  # its Ray was shut down, not the step: the workflow is handed back
        if exc is None:
            value = result
            if isinstance(value, ContinuationGraph):
                self._continuing.add(getattr(step.func, "__code__", None))
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
        catcher = self._catcher(run, task) if isinstance(exc, RayTaskError) else None
        if catcher is not None:
            self._caught_by(run, catcher, cause)
            return
        self._fail(run, cause, tid)

    @staticmethod
    def _catcher(run: Run, task: Task) -> Task | None:
        """As in Ray Workflows: the nearest step up the chain of continuations that
        ``task`` is part of whose ``catch_exceptions`` is set (it catches the error)."""
        creator = task.creator
        while creator is not None:
            up = run.tasks[creator]
            if up.step.catch_exceptions:
                return up
            creator = up.creator
        return None

    def _caught_by(self, run: Run, catcher: Task, cause: BaseException) -> None:
        """``catcher``'s continuation failed with an application error it catches: its
        output is ``(None, cause)``, and the rest of its continuation is abandoned (its
        running steps are stopped; nothing reads their outputs)."""
        if catcher.state != "CONTINUED":
            return  # its output is known already: nothing can read the error
        stop: list[ray.ObjectRef] = []
        for task in continuation_subtree(run, catcher.step.task_id):
            task.state = "ABANDONED"
            tid = task.step.task_id
            ref = run.running.pop(tid, None)
            if ref is not None:
                stop.append(ref)
            call = run.tool_calls.pop(tid, None)
            if call is not None:
                call.cancel()
        if stop:
            self._pool.submit(stop_tasks, stop)
        if catcher.alias is not None:
            target = run.tasks[catcher.alias]
            target.alias_parents = tuple(
                p for p in target.alias_parents if p != catcher.step.task_id
            )
            catcher.alias = None
        catcher.ref = None
        catcher.state = "RUNNING"
        self._succeed(run, catcher, (None, cause))

    def _succeed(
        self, run: Run, task: Task, value: Any, on_commit: Callable[[], None] | None = None
    ) -> None:
        if task.state == "ABANDONED":
            return  # a step of a continuation whose error was caught further up
        step = task.step
        # the driver keeps a copy only where something will read it from here: without a
        # ref to hand on, a reader yet to start needs the value (a catch_exceptions step's
        # output is not its task's return). A step whose readers have all been submitted
        # already (pipelined: they hold its ref) keeps none; a later get_output loads it
        # from the journal. (It used to keep every such value to the end of the run: a
        # pipelined chain's or a fan-out's every output, a second copy in the driver.)
        keep = (
            step.task_id == run.output
            or bool(task.alias_parents)
            or step.task_id in run.waiters
            or (task.ref is None and task.consumers_left > 0)
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
            data = serde.dumps(value)
            if len(data) <= INLINE_OUTPUT_BYTES and step.kind == "task":
                # small: kept here, and handed to readers as the value; its ObjectRef is
                # let go once committed (Ray keeps an object and its task's lineage while
                # a ref lives: a fan-out's 100,000 of them cost Ray ~4 KB each)
                task.value = value
                task.has_value = True
                task.inline = True
        except serde.HasObjectRefs:
            # ObjectRefs inside: resolve them off the engine thread, then commit
            def slow() -> None:
                try:
                    blob = serde.dumps(value, resolve_refs=True)
                except Exception as exc:
                    error = exc
                    self._post(lambda: self._fail(run, error, tid))
                    return
                # the rest on the engine thread: it owns the run
                self._post(lambda: self._write_output(run, task, blob, commit))

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
        limit = self.limits.max_output_bytes
        if limit is not None and len(data) > limit:
            # nothing of it reaches the journal; the step fails, naming the limit
            self._fail(run, StepOutputTooLargeError(len(data), limit), step.task_id)
            return
        inline, digest, blob = Storage.split_value(data)
        progressed = self._progressed(run)
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
        if blob is None and self._on_loop_thread():
            # the common case: the outputs that finish in one turn go to the journal as
            # one statement (executemany) in the turn's commit
            rows = self._open_rows
            if rows is None:
                rows = _OutputRows(self)
                self._batch.add(rows.apply, rows.committed)
                self._open_rows = rows
            rows.add(row, on_commit, run.workflow_id if progressed else None)
            return

        def write(db: Any) -> None:
            db.execute(_OUTPUT_SQL, row)
            if progressed:
                clean_point(db, run.workflow_id)

        self._write(write, on_commit, blob)

    def _write(
        self,
        apply: Callable[[Any], None],
        on_commit: Callable[[], None] | None = None,
        blob: tuple[str, bytes] | None = None,
    ) -> None:
        # a write other than an output row closes the open group of rows: rows added after
        # it are applied after it (the journal sees writes in the order they were made)
        self._open_rows = None
        super()._write(apply, on_commit, blob)

    def _commit_writes(self) -> None:
        super()._commit_writes()
        self._open_rows = None  # (committed, or discarded with a failed journal)

    @staticmethod
    def _progressed(run: Run) -> bool:
        """A resumed run made progress: true once (its next write also clears the count
        of resumes that did not reach a clean point, and any quarantine mark)."""
        if not run.unclean:
            return False
        run.unclean = False
        return True

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
        blob = serde.dumps(graph)
        step = task.step
        progressed = self._progressed(run)
        returned_at = time.time()

        def write(db: Any) -> None:
            if progressed:
                clean_point(db, run.workflow_id)
            # its end time is when it returned the continuation, as in Ray Workflows
            db.execute(
                "INSERT INTO task(workflow_id, task_id, status, continuation, options,"
                " user_metadata, start_time, end_time) VALUES (?, ?, 'CONTINUED', ?, ?, ?, ?, ?)"
                " ON CONFLICT(workflow_id, task_id) DO UPDATE SET status = 'CONTINUED',"
                " continuation = excluded.continuation, end_time = excluded.end_time,"
                " start_time = COALESCE(task.start_time, excluded.start_time)",
                (
                    run.workflow_id,
                    tid,
                    blob,
                    json.dumps(step.options_record()),
                    json.dumps(step.metadata),
                    task.started_at,
                    returned_at,
                ),
            )

        task.ref = None
        self._write(write, lambda: self._expand(run, task, graph))

    def _expand(self, run: Run, task: Task, graph: Graph) -> None:
        if run.finished or task.state == "ABANDONED":
            return
        add_steps(run, graph.steps)
        for step in graph.steps:
            run.tasks[step.task_id].creator = task.step.task_id
        task.state = "CONTINUED"
        task.alias = graph.output
        out = run.tasks[graph.output]
        out.alias_parents = (*out.alias_parents, task.step.task_id)
        ready = [run.tasks[step.task_id] for step in graph.steps]
        self._start_tasks(run, [t for t in ready if t.pending == 0 and t.state == "WAITING"])

    def _on_committed(self, run: Run, tid: str) -> None:
        if run.finished or run.tasks[tid].state == "ABANDONED":
            return
        self._mark_done(run, run.tasks[tid])
        self._maybe_finish(run)

    def _unpipeline(self, run: Run, task: Task) -> None:
        """A pipelined step whose parent returned a continuation: back to waiting, to be
        started the usual way when the continuation's output is known."""
        task.early = False
        run.early -= 1
        task.state = "WAITING"
        task.started_at = None
        task.ref = None
        for dep in task.step.deps:  # (it will read them again)
            run.tasks[dep].consumers_left += 1
        if task.pending == 0:
            self._start_task(run, task)

    def _mark_done(self, run: Run, task: Task) -> None:
        stack = [task]
        ready: list[Task] = []
        held: list[Task] = []
        while stack:
            t = stack.pop()
            t.state = "DONE"
            if t.inline:
                t.ref = None  # (readers get the value: _task_arg)
            if t.early:
                t.early = False
                run.early -= 1
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
                    ready.append(d)
                elif d.pending == 0 and d.early_result is not NO_RESULT:
                    held.append(d)
            for pid in t.alias_parents:
                stack.append(run.tasks[pid])
        self._start_tasks(run, ready)
        for d in held:  # pipelined steps that finished first: their turn to commit
            result, d.early_result = d.early_result, NO_RESULT
            self._on_task_done(run, d.step.task_id, result)
        if run.blocked and run.early < self.pipeline_window:
            blocked, run.blocked = run.blocked, []
            for parent in dict.fromkeys(blocked):  # (in order, each once)
                if parent.state == "RUNNING" and not run.finished:
                    self._pipeline(run, parent)

    def _start_tasks(self, run: Run, tasks: list[Task]) -> None:
        """Start ``tasks``; a burst of them with the completion watcher held."""
        with self._burst(len(tasks)):
            for task in tasks:
                self._start_task(run, task)

    def _burst(self, count: int) -> contextlib.AbstractContextManager[None]:
        """Around starting ``count`` tasks: at least BURST of them hold the completion
        watcher meanwhile."""
        return self._completions.paused() if count >= BURST else contextlib.nullcontext()

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
                "UPDATE wf SET status = 'SUCCESSFUL', output_task = ?, end_time = ?,"
                " resume_attempts = 0, quarantine = NULL WHERE workflow_id = ?",
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
        if tid is not None and tid in run.tasks and run.tasks[tid].state == "ABANDONED":
            return  # a step of a continuation whose error was caught further up
        run.finished = True
        running = list(run.running.values())
        run.running.clear()
        if running:
            # off the engine thread: a polite cancel, then the worker is killed after a
            # grace period (a polite cancel cannot interrupt a step blocked in C code)
            self._pool.submit(stop_tasks, running)
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
            text = bound_error_text(
                f"step {tid!r} failed: {getattr(cause, 'message', None) or cause}", self.limits
            )
            error = WorkflowExecutionError(wid, text, cause)
        else:
            where = f"task {tid!r}: " if tid else ""
            text = bound_error_text(f"{where}{type(cause).__name__}: {cause}", self.limits)
            error = execution_error(wid, cause, text)
        task = run.tasks.get(tid) if tid is not None else None
        node = task.node if task is not None else None
        reason = task.reason if task is not None else None
        step_error = bound_error_text(getattr(cause, "message", None) or str(cause), self.limits)
        try:
            blob: bytes | None = serde.dumps(cause)
        except Exception:
            blob = None
        if blob is not None and len(blob) > self.limits.max_stored_error_bytes:
            blob = None  # too big to keep: the (bounded) text stands for it

        def write(db: Any) -> None:
            db.execute(
                "UPDATE wf SET status = ?, error = ?, error_text = ?, end_time = ?,"
                " resume_attempts = 0, quarantine = NULL WHERE workflow_id = ?",
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
        self._drop_held(run)
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
        self._run_closed(run)

    def _load_output(self, workflow_id: str, task_id: str) -> Any:
        return load_task_output(self.storage, workflow_id, task_id)


_OUTPUT_SQL = (
    "INSERT INTO task(workflow_id, task_id, status, attempts, output, output_hash,"
    " options, user_metadata, start_time, end_time, tool, node, reason)"
    " VALUES (?, ?, 'SUCCESSFUL', 1, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(workflow_id, task_id) DO UPDATE SET status = 'SUCCESSFUL',"
    " attempts = MAX(task.attempts, 1), output = excluded.output,"
    " tool = excluded.tool, node = excluded.node, reason = excluded.reason,"
    " output_hash = excluded.output_hash, options = excluded.options,"
    " user_metadata = excluded.user_metadata, end_time = excluded.end_time,"
    " start_time = COALESCE(task.start_time, excluded.start_time)"
)


class _OutputRows:
    """Step outputs journaled as one write: one ``executemany`` in the turn's transaction,
    then each row's ``on_commit`` in the order the rows were added. The group closes when
    it is first applied, or when another write is made (:meth:`StepExecution._write`);
    a commit that is retried applies the same rows again (upserts: no duplicate)."""

    __slots__ = ("_owner", "callbacks", "clean", "rows")

    def __init__(self, owner: StepExecution) -> None:
        self._owner = owner
        self.rows: list[tuple[Any, ...]] = []
        self.callbacks: list[Callable[[], None]] = []
        self.clean: list[str] = []  # workflows whose first commit after a resume this is

    def add(self, row: tuple[Any, ...], on_commit: Callable[[], None], clean: str | None) -> None:
        self.rows.append(row)
        self.callbacks.append(on_commit)
        if clean is not None:
            self.clean.append(clean)

    def apply(self, db: Any) -> None:
        if self._owner._open_rows is self:
            self._owner._open_rows = None
        db.executemany(_OUTPUT_SQL, self.rows)
        for workflow_id in self.clean:
            clean_point(db, workflow_id)

    def committed(self) -> None:
        for callback in self.callbacks:
            try:
                callback()
            except Exception:
                log.exception("commit callback failed")


def _pipelinable(run: Run, reader: Task, continuing: set[Any]) -> bool:
    """Whether ``reader`` may be submitted before the steps it reads have committed (not
    on a step whose function has returned a continuation before: ``continuing``)."""
    step = reader.step
    if step.kind != "task" or step.catch_exceptions:
        return False
    for dep in step.deps:
        parent = run.tasks[dep]
        if parent.state == "DONE":
            continue
        if (
            parent.state != "RUNNING"
            or parent.step.kind != "task"
            or parent.step.catch_exceptions
            or parent.ref is None
            or getattr(parent.step.func, "__code__", None) in continuing
        ):
            return False
    return _refs_on_top(step.args) and _refs_on_top(step.kwargs.values())


def _refs_on_top(values: Any) -> bool:
    """No step output nested inside a container among ``values`` (a task reads nested
    ObjectRefs as they are: one of a continued parent would not be caught)."""
    for value in values:
        if type(value) in ATOMS or isinstance(value, StepRef | InputRef):
            continue
        if isinstance(value, list | tuple | set | frozenset | dict) and _has_ref(value):
            return False
    return True


def _has_ref(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, StepRef):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
    return False


def clean_point(db: Any, workflow_id: str) -> None:
    """In a journal transaction: the workflow reached a clean point (a step committed
    after a resume), so the resumes that did not reach one are forgotten."""
    db.execute(
        "UPDATE wf SET resume_attempts = 0, quarantine = NULL WHERE workflow_id = ?",
        (workflow_id,),
    )


def stop_tasks(refs: list[ray.ObjectRef]) -> None:
    """Stop running Ray tasks (polite cancel, then kill after a grace period; blocking)."""
    from workflows import ray_tools  # it imports trio: only when something is stopped

    ray_tools.stop_tasks(refs)
