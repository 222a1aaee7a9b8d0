"""The durable workflow engine: one per process, on one thread, drives every workflow.

:class:`Engine` starts, resumes, admits (``max_running_workflows``), cancels, deletes and
reports workflows; ownership of a workflow in the shared journal is claimed atomically and
kept alive by a heartbeat. Its parts: the engine thread and its per-turn journal commit
(``loop``), running steps (``execution``), tool steps (``tool_runs``), sleeps and events
(``waits``), run bookkeeping (``runstate``), results for ``*_async`` (``results``) and
reading the journal (``outputs``).

**Quarantine.** A workflow whose resume makes the process die (a crash, the OOM killer,
an operator's kill -9 of a node that stopped answering) must not make every later start
die too. So every resume first counts itself in the journal (``resume_attempts``, durably,
before anything of the workflow is loaded), and the workflow's next clean point clears the
count: a step committed, the workflow ending, or a clean shutdown handing it back. A crash
leaves it counted. A resume that is *automatic* (a node's start, ``resume_all``, ``run``
or a submit of an existing id) of a workflow counted ``max_resume_attempts`` times marks
it QUARANTINED instead, with the reason, and leaves it alone; so does one already marked.
A resume by hand (``resume``) clears the mark and counts on: if the process dies again,
the next automatic resume quarantines it at once. A stall is bounded too: a resume that
has not finished starting (loading, claiming, starting its ready steps, on the engine
thread) after ``resume_stall_s`` is marked QUARANTINED at once by a watchdog thread, so
that the restart that ends the stall does not resume it again; if it does finish starting,
its first committed step clears the mark.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import ray

from workflows.engine import serde
from workflows.engine.execution import StepExecution, stop_tasks
from workflows.engine.graph import (
    Graph,
    TaskIdAllocator,
    graph_from_dag,
)
from workflows.engine.limits import StepLimits
from workflows.engine.liveness import owner_alive, this_process_owner
from workflows.engine.outputs import ACTIVE, stored_status
from workflows.engine.results import ResultSlots
from workflows.engine.runstate import (
    Run,
    add_steps,
    no_longer_needed,
    settle_done,
)
from workflows.engine.storage import (
    Storage,
    StorageError,
    WorkflowRow,
)
from workflows.engine.tool_runs import StepEvents, ToolRunner
from workflows.errors import (
    WorkflowCancellationError,
    WorkflowError,
    WorkflowExecutionError,
    WorkflowNotFoundError,
    WorkflowNotResumableError,
    WorkflowQuarantinedError,
    WorkflowStillActiveError,
)
from workflows.status import WorkflowStatus

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
DEFAULT_MAX_RESUME_ATTEMPTS = 3
DEFAULT_RESUME_STALL_S = 60.0
_ENGINE_SHUT_DOWN = (
    "the workflow engine was shut down before the workflow finished; resume it to finish it"
)
_RAY_SHUT_DOWN = (
    "Ray was shut down (ray.shutdown()) before the workflow finished; resume it to finish it"
)


class Engine(StepExecution):
    """The process's workflow engine. ``max_resume_attempts`` (None or 0: never) and
    ``resume_stall_s`` (None or 0: no watchdog) bound what one workflow's resumes may do
    to the process (see the module's docstring); ``limits`` what one step may produce;
    ``clock`` is the monotonic clock of the stall watchdog."""

    def __init__(
        self,
        storage: Storage,
        *,
        max_running_workflows: int | None = None,
        max_pending_workflows: int | None = None,
        tool_runner: ToolRunner | None = None,
        step_events: StepEvents | None = None,
        limits: StepLimits | None = None,
        max_resume_attempts: int | None = DEFAULT_MAX_RESUME_ATTEMPTS,
        resume_stall_s: float | None = DEFAULT_RESUME_STALL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(storage, tool_runner, limits or StepLimits(), step_events)
        self.max_running = max_running_workflows
        self.max_pending = max_pending_workflows
        self.max_resume_attempts = max_resume_attempts or None
        self.resume_stall_s = resume_stall_s or None
        self._clock = clock
        # (workflow id, clock time) of the resume the engine thread is starting, if any
        self._starting: tuple[str, float] | None = None
        self._watch_stop = threading.Event()
        self.owner = this_process_owner()
        self._pending: deque[Run] = deque()
        self._results = ResultSlots()
        # One full collection now, at start-up: otherwise the objects that importing Ray
        # and starting it left behind are first scanned in a gen-2 collection that the
        # first workflow's allocations trigger (60-80 ms in the middle of its first
        # burst of submissions). Nothing about the collector's settings changes.
        gc.collect()
        self._start_loop()
        self._schedule(time.monotonic() + HEARTBEAT_S, self._heartbeat)
        storage.on_failure(lambda exc: self._post(lambda: self._storage_failed(exc)))
        if self.resume_stall_s is not None:
            threading.Thread(
                target=self._watch_stalls, name="workflows-watchdog", daemon=True
            ).start()

    # -- plumbing ------------------------------------------------------------------------

    def _storage_failed(self, exc: BaseException) -> None:
        """The journal stopped working: nothing can be committed, so every live workflow
        fails now (without touching the journal) instead of hanging."""
        self._batch.discard()
        for ref in self._abandon_runs(StorageError(f"the workflow journal failed: {exc}")):
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=False)

    def _abandon_runs(self, error: BaseException) -> list[ray.ObjectRef]:
        """End every live run here without a journal record: its waiting callers get
        ``error``. Returns the Ray tasks its steps were running, for the caller to stop."""
        running: list[ray.ObjectRef] = []
        for run in self._runs.values():
            run.finished = True
            self._drop_timers(run)
            running.extend(run.running.values())
            run.running.clear()
            for fut in [run.future, *(f for futs in run.waiters.values() for f in futs)]:
                if not fut.done():
                    fut.set_exception(error)
        self._runs.clear()
        self._pending.clear()
        return running

    def shutdown(self) -> None:
        """Stop the engine. The workflows it was running stay in the journal as they
        are, and are handed back: other processes (and this one, after a new ``init``)
        can resume them at once, without waiting for this process to exit. Their running
        steps are stopped (whoever resumes them runs them again), and whoever waits for
        one of them gets a :class:`WorkflowError` saying so."""
        if self._stopped:
            return
        self._watch_stop.set()
        self._stop_loop()
        if self._loop_alive():
            # the engine thread did not stop in time (a journal write blocked by another
            # process, say): it still owns the runs, so leave them as they are
            log.warning("the workflow engine thread did not stop; its workflows stay owned")
        else:
            self._hand_back()
        self._waits.close()
        self._completions.close()
        self._pool.shutdown(wait=False)
        self._results.close(ray_lost=self.ray_lost())

    def _hand_back(self) -> None:
        """After the engine thread stopped: stop, release and fail the unfinished runs."""
        if self.storage.failure is None:
            self.storage.flush()
            if self._runs:
                self._release(list(self._runs))
        ray_lost = self.ray_lost()
        running = self._abandon_runs(
            WorkflowError(_RAY_SHUT_DOWN if ray_lost else _ENGINE_SHUT_DOWN)
        )
        if running and not ray_lost:
            # polite cancel, then the worker is killed after a grace period: in a thread of
            # its own, so shutdown does not wait for it
            threading.Thread(target=stop_tasks, args=(running,), daemon=True).start()

    def _release(self, workflow_ids: list[str]) -> None:
        """Give up ownership of ``workflow_ids`` in the journal (they become resumable)."""
        owner = self.owner

        def release(db: Any) -> None:
            # a clean shutdown is a clean point: the process did not die while running them
            db.executemany(
                "UPDATE wf SET owner = NULL, resume_attempts = 0 WHERE workflow_id = ?"
                " AND owner = ? AND status IN ('RUNNING', 'PENDING')",
                [(wid, owner) for wid in workflow_ids],
            )

        try:
            self.storage.transact(release)
        except Exception:
            log.exception("could not hand back %d workflows at shutdown", len(workflow_ids))

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
        Returns once the workflow is recorded in the journal (its claim commits at once)."""
        return self.call(lambda: self._start(dag, args, kwargs, workflow_id, metadata))

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
            return self._resume(row, automatic=True)
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
                fut: Future[Any] = Future()
                if status in (WorkflowStatus.FAILED, WorkflowStatus.CANCELED):
                    fut.set_exception(WorkflowExecutionError(workflow_id, row.error_text))
                    return fut, False
                if status is WorkflowStatus.QUARANTINED:
                    fut.set_exception(WorkflowQuarantinedError(workflow_id, row.quarantine or ""))
                    return fut, False
                return self._resume(row, automatic=True), False
            graph = build()
            allocator = TaskIdAllocator({s.task_id for s in graph.steps})
            return self._create(graph, allocator, args, kwargs, workflow_id, metadata), True

        return self.call(go)

    def resume_interrupted(self) -> list[str]:
        """Resume every workflow in the storage that no live process runs (node start),
        except the QUARANTINED ones (each is logged); returns the ids resumed."""

        def go() -> list[str]:
            resumed = []
            for row in self.storage.list_workflows():
                if row.workflow_id in self._runs:
                    continue
                status = stored_status(row, self.owner)
                if status is WorkflowStatus.QUARANTINED:
                    log.warning(
                        "workflow %r is QUARANTINED and is not resumed: %s",
                        row.workflow_id,
                        row.quarantine,
                    )
                    continue
                if status is not WorkflowStatus.RESUMABLE:
                    continue
                try:
                    self._resume(row, automatic=True)
                except WorkflowQuarantinedError:
                    continue  # logged when it was marked
                except Exception:
                    log.exception("cannot resume workflow %r", row.workflow_id)
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
        graph_blob = serde.dumps(graph, resolve_refs=True)
        inputs_blob = serde.dumps((args, kwargs), resolve_refs=True)
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
                    # as in Ray Workflows: the time it started running (a pending one
                    # has none yet)
                    now if status is WorkflowStatus.RUNNING else None,
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
            return self._resume(existing, automatic=True)
        if status is WorkflowStatus.RUNNING:
            self._kick(run)
        return run.future

    def _admit(self, run: Run) -> WorkflowStatus:
        active = sum(1 for r in self._runs.values() if r.status is WorkflowStatus.RUNNING)
        self._runs[run.workflow_id] = run
        if self.max_running is not None and active >= self.max_running:
            if self.max_pending is not None and len(self._pending) >= self.max_pending:
                del self._runs[run.workflow_id]
                # Ray Workflows' text, which callers match on; the limit follows it
                raise queue.Full(
                    f"Workflow queue has been full (max_pending_workflows={self.max_pending})"
                )
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
        self._start_tasks(run, ready)
        self._maybe_finish(run)

    # -- resuming ------------------------------------------------------------------------

    def resume(self, workflow_id: str, *, automatic: bool = False) -> Future[Any]:
        """Resume a workflow. By hand (``automatic=False``) a QUARANTINED one is resumed
        too (its mark is cleared); an automatic resume raises
        :class:`WorkflowQuarantinedError` for it instead (see the module's docstring)."""

        def go() -> Future[Any]:
            if workflow_id in self._runs:
                raise RuntimeError(f"workflow {workflow_id!r} is already running")
            row = self.storage.get_workflow(workflow_id)
            if row is None:
                raise WorkflowNotResumableError(workflow_id)
            return self._resume(row, automatic=automatic)

        return self.call(go)

    def _resume(self, row: WorkflowRow, *, automatic: bool) -> Future[Any]:
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
        if automatic:
            self._refuse_if_quarantined(row)
        # counted durably before anything of the workflow is loaded: if what follows (or
        # anything until its next clean point) kills the process, the count stays
        self._count_resume(wid, by_hand=not automatic)
        self._starting = (wid, self._clock())
        try:
            return self._start_resumed(row)
        finally:
            self._starting = None

    def _start_resumed(self, row: WorkflowRow) -> Future[Any]:
        """Rebuild the run of ``row`` from the journal, claim it and start what is ready."""
        wid = row.workflow_id
        graph: Graph = serde.loads(row.graph)
        args, kwargs = serde.loads(row.inputs)
        allocator = TaskIdAllocator({s.task_id for s in graph.steps})
        run = self._new_run(wid, graph, args, kwargs, row.user_metadata, allocator)
        run.start_time = time.time()
        run.unclean = True  # until its first committed step (a clean point)
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
                sub: Graph = serde.loads(r.continuation)
                for s in sub.steps:
                    allocator.allocate(s.task_id)
                add_steps(run, sub.steps)
                for s in sub.steps:
                    run.tasks[s.task_id].creator = tid
                task.state = "CONTINUED"
                task.alias = sub.output
                out = run.tasks[sub.output]
                out.alias_parents = (*out.alias_parents, tid)
                todo.extend(s.task_id for s in sub.steps if s.task_id in rows)
            elif r.timer_end is not None:
                task.timer_end = r.timer_end
            elif r.status == "RUNNING" and r.node:
                task.node = r.node  # a tool step: ask the same node again (re-attach)
        # ids the journal holds rows for are not handed out again (a continuation whose
        # error a step up the chain caught left rows that no task of the run stands for)
        allocator.reserve(rows)
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
            # as in Ray Workflows, a resume that runs it starts its time again (a pending
            # one keeps the last until it runs)
            now = time.time()
            db.execute(
                "UPDATE wf SET status = ?, owner = ?, heartbeat = ?, error = NULL,"
                " error_text = NULL, end_time = NULL,"
                " start_time = CASE WHEN ? THEN ? ELSE start_time END WHERE workflow_id = ?",
                (run.status.value, self.owner, now, run.status is WorkflowStatus.RUNNING, now, wid),
            )

        try:
            self.storage.transact(claim)
        except BaseException:
            self._unadmit(run)
            raise
        if run.status is WorkflowStatus.RUNNING:
            self._kick(run)
        return run.future

    # -- quarantine ----------------------------------------------------------------------

    def _refuse_if_quarantined(self, row: WorkflowRow) -> None:
        """Before an automatic resume: raise :class:`WorkflowQuarantinedError` if the
        workflow is marked QUARANTINED, or if its resumes reached the limit without a
        clean point (it is marked now)."""
        wid = row.workflow_id
        if row.quarantine is not None:
            raise WorkflowQuarantinedError(wid, row.quarantine)
        limit = self.max_resume_attempts
        if limit is not None and row.resume_attempts >= limit:
            reason = (
                f"it was resumed {row.resume_attempts} times in a row and each time the "
                "process running it stopped before it completed a step "
                f"(max_resume_attempts is {limit})"
            )
            self._quarantine(wid, reason)
            raise WorkflowQuarantinedError(wid, reason)

    def _count_resume(self, wid: str, *, by_hand: bool) -> None:
        """Count a resume of ``wid`` in the journal, durably, now (checking, in the same
        transaction, that no other live process runs it). By hand, it also clears the
        QUARANTINED mark."""

        def count(db: Any) -> None:
            found = db.execute(
                "SELECT status, owner, heartbeat FROM wf WHERE workflow_id = ?", (wid,)
            ).fetchone()
            if found is None:
                raise WorkflowNotResumableError(wid)
            status, owner, heartbeat = found
            if (
                WorkflowStatus(status) in ACTIVE
                and owner != self.owner
                and owner_alive(owner, heartbeat)
            ):
                raise RuntimeError(f"workflow {wid!r} is running in another process ({owner})")
            clear = ", quarantine = NULL" if by_hand else ""
            db.execute(
                f"UPDATE wf SET resume_attempts = resume_attempts + 1{clear} WHERE workflow_id = ?",
                (wid,),
            )

        self.storage.transact(count)

    def _quarantine(self, wid: str, reason: str) -> None:
        """Mark ``wid`` QUARANTINED (durably, now), unless it ended or is marked already."""

        def mark(db: Any) -> int:
            cur = db.execute(
                "UPDATE wf SET quarantine = ? WHERE workflow_id = ? AND quarantine IS NULL"
                " AND status IN ('RUNNING', 'PENDING')",
                (reason, wid),
            )
            return int(cur.rowcount)

        if self.storage.transact(mark):
            log.warning("workflow %r is QUARANTINED (not resumed on its own): %s", wid, reason)

    def _watch_stalls(self) -> None:
        """The watchdog thread: quarantine a resume that takes too long to start (the
        engine thread cannot be interrupted; the mark makes the restart that ends the
        stall skip the workflow). Its first committed step clears the mark."""
        limit = self.resume_stall_s
        assert limit is not None
        flagged: tuple[str, float] | None = None
        while not self._watch_stop.wait(min(1.0, limit / 4)):
            starting = self._starting
            if starting is None or starting is flagged:
                continue
            wid, since = starting
            if self._clock() - since < limit:
                continue
            flagged = starting
            try:
                self._quarantine(
                    wid,
                    f"its resume had not finished starting after {limit:g} s "
                    "(resume_stall_s): it stalled the process",
                )
            except Exception:
                log.exception("could not quarantine the stalled workflow %r", wid)

    def _run_closed(self, run: Run) -> None:
        while self._pending and (
            self.max_running is None
            or sum(1 for r in self._runs.values() if r.status is WorkflowStatus.RUNNING)
            < self.max_running
        ):
            nxt = self._pending.popleft()
            wid = nxt.workflow_id

            def mark(db: Any, wid: str = wid, now: float = time.time()) -> None:
                db.execute(
                    "UPDATE wf SET status = 'RUNNING', start_time = ? WHERE workflow_id = ?",
                    (now, wid),
                )

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

    def delete(self, workflow_id: str) -> WorkflowRow:
        """Remove a workflow that is not running (here or in another live process) and the
        stored outputs no other workflow uses; return its last journal row.

        Raises :class:`WorkflowNotFoundError` or :class:`WorkflowStillActiveError`."""
        live = self.live_status(workflow_id)
        if live in ACTIVE:
            raise WorkflowStillActiveError("delete", workflow_id)
        storage = self.storage
        row = storage.get_workflow(workflow_id)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        if stored_status(row, self.owner) in ACTIVE:
            raise WorkflowStillActiveError("delete", workflow_id)
        hashes = {t.output_hash for t in storage.list_tasks(workflow_id) if t.output_hash}

        def remove(db: Any) -> None:
            # checked again in the deleting transaction: a process that claimed the workflow
            # meanwhile keeps it
            found = db.execute(
                "SELECT status, owner, heartbeat FROM wf WHERE workflow_id = ?", (workflow_id,)
            ).fetchone()
            if found is None:
                raise WorkflowNotFoundError(workflow_id)
            now = WorkflowStatus(found[0])
            if self.runs_here(workflow_id) or (
                now in ACTIVE and found[1] != self.owner and owner_alive(found[1], found[2])
            ):
                raise WorkflowStillActiveError("delete", workflow_id)
            db.execute("DELETE FROM task WHERE workflow_id = ?", (workflow_id,))
            db.execute("DELETE FROM wf WHERE workflow_id = ?", (workflow_id,))

        storage.transact(remove)
        still = storage.referenced_blobs()
        for digest in hashes - still:
            storage.blob_path(digest).unlink(missing_ok=True)
        return row

    def runs_here(self, workflow_id: str) -> bool:
        """Whether this engine runs (or is about to run) the workflow. Safe from any thread
        without waiting for the engine thread: a run is registered before the transaction
        that claims it, so a check inside another transaction sees every claim that could
        commit after it."""
        return workflow_id in self._runs

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

    def _lose_ray(self) -> None:
        """Ray was shut down under the engine: as Ray Workflows' runtime ended with
        ``ray.shutdown()``, the workflows are handed back (RESUMABLE at once, to any
        process, and here after a new ``ray.init()``); their steps died with that Ray.
        Whoever waits for one gets a :class:`WorkflowError` saying so."""
        if self._runs and self.storage.failure is None:
            self._release(list(self._runs))
        self._abandon_runs(WorkflowError(_RAY_SHUT_DOWN))

    def _heartbeat(self) -> None:
        if self.ray_lost():
            self._lose_ray()
            return  # no more heartbeats: this engine ends at the next API call
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
