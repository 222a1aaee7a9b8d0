"""The node's workflows: YAML workflows run by the durable engine (``workflows.engine.lifecycle``),
with each step placed by the node's scheduler (locally on Ray or on a peer).

The engine runs in its own thread; this service is its bridge to trio: the engine hands
tool steps to :meth:`_tool_runner`, which starts them in the node's nursery and completes
a ``concurrent.futures.Future`` the engine waits on. Reads of the journal go through worker
threads, never blocking the trio loop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from node.config import WorkflowsConfig
from node.handoff.delegator import Abandon, abandon_on_cancel
from node.progress import ProgressHub
from protocols import logsafe
from workflows.dsl import WorkflowSpec
from workflows.engine.graph import OUTPUTS_STEP, Graph, graph_from_spec
from workflows.engine.lifecycle import Engine
from workflows.engine.outputs import load_task_output, stored_status
from workflows.engine.serde import loads
from workflows.engine.storage import Storage, TaskRow, WorkflowRow
from workflows.engine.tool_runs import Placed
from workflows.errors import WorkflowNotFoundError, WorkflowStillActiveError
from workflows.status import WorkflowStatus
from workflows.tool_steps import (
    SKIPPED_REASON,
    StepExecutionError,
    StepExecutor,
    ToolCall,
    ToolOutcome,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class StepView:
    name: str
    tool: str
    status: str
    node: str | None
    reason: str | None
    error: str | None
    attempts: int
    started_at: float | None
    ended_at: float | None
    placement: dict[str, Any] | None = None  # how its last placement was decided (JSON)


@dataclass(frozen=True)
class WorkflowView:
    workflow_id: str
    name: str
    status: WorkflowStatus
    error: str | None
    created_at: float
    ended_at: float | None
    outputs: dict[str, Any] | None
    steps: list[StepView]


class WorkflowService:
    def __init__(
        self,
        storage: Storage,
        executor: StepExecutor,
        config: WorkflowsConfig | None = None,
        progress: ProgressHub | None = None,
    ) -> None:
        self.storage = storage
        self.executor = executor
        self.config = config or WorkflowsConfig()
        self.progress = progress  # where each step's progress is reported (node.progress)
        self.engine: Engine | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(functools.partial(fn, *args))

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start the engine, resume interrupted workflows, run until cancelled."""
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                cfg = self.config
                self.engine = await self._io(
                    lambda: Engine(
                        self.storage,
                        tool_runner=self._tool_runner,
                        step_events=self._step_event,
                        limits=cfg.step_limits(),
                        max_resume_attempts=cfg.max_resume_attempts,
                        resume_stall_s=cfg.resume_stall_s,
                    )
                )
                resumed = await self._io(self.engine.resume_interrupted)
                for wid in resumed:
                    log.info("resumed interrupted workflow %s", logsafe(wid))
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                if self.engine is not None:
                    await self._io(self.engine.shutdown)

    # -- engine → trio -------------------------------------------------------------------

    def _tool_runner(self, call: ToolCall, placed: Placed) -> Future[Any]:
        fut: Future[Any] = Future()
        assert self._token is not None and self._nursery is not None
        nursery = self._nursery
        # shutting down: left pending, the workflow resumes at the next start
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(lambda: nursery.start_soon(self._run_tool, call, placed, fut))
        return fut

    def _step_event(self, workflow_id: str, step: str, kind: str, reason: str) -> None:
        """A step the engine skipped, or one that waits for its retry (engine thread)."""
        progress, token = self.progress, self._token
        if progress is None or token is None:
            return

        def record() -> None:
            progress.step(workflow_id, step, kind, reason=reason)

        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(record)

    async def _run_tool(self, call: ToolCall, placed: Placed, fut: Future[Any]) -> None:
        progress = self.progress

        async def on_placed(
            node: str, reason: str, detail: Mapping[str, Any] | None = None
        ) -> None:
            placed(node, reason, detail)  # a queued journal write: does not block
            if progress is not None:
                progress.step(
                    call.workflow_id, call.step, "placed", tool=call.tool, node=node, reason=reason
                )

        token = self._token
        assert token is not None
        scope = trio.CancelScope()
        abandon = Abandon()

        def stop() -> None:
            abandon.request("its workflow was canceled or failed")
            scope.cancel()

        def on_done(f: Future[Any]) -> None:
            # the engine cancels the future when the workflow fails or is canceled: stop the
            # step here too (a local Ray task is cancelled; a peer running a delegated step is
            # sent a handoff ``cancel``). A node shutting down cancels the task without this:
            # a delegated step then goes on, for the workflow to re-attach after the restart.
            if f.cancelled():
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(stop)

        fut.add_done_callback(on_done)
        with scope, abandon_on_cancel(abandon):
            try:
                outcome = await self.executor.execute(call, on_placed)
                missing = [o for o in call.declared_outputs if o not in outcome.outputs]
                if missing:
                    raise StepExecutionError(
                        f"tool {call.tool!r} returned no output {missing[0]!r} "
                        f"(it returned {sorted(outcome.outputs)})",
                        node=outcome.node,
                        reason=outcome.reason,
                    )
            except Exception as exc:
                if progress is not None:
                    progress.step(
                        call.workflow_id,
                        call.step,
                        "failed",
                        tool=call.tool,
                        node=getattr(exc, "node", None),
                        error=str(exc),
                    )
                if not fut.done():
                    fut.set_exception(exc)
                return
            if progress is not None:
                progress.step(
                    call.workflow_id, call.step, "finished", tool=call.tool, node=outcome.node
                )
            # (cancellation by the node shutting down leaves the future pending on purpose:
            # the workflow stays RUNNING in the journal and resumes at the next start)
            if not fut.done():
                fut.set_result(ToolOutcome(outcome.outputs, outcome.node, outcome.reason))

    # -- control API ---------------------------------------------------------------------

    async def submit(
        self,
        spec: WorkflowSpec,
        inputs: Mapping[str, Any],
        workflow_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[str, bool]:
        """Journal a YAML workflow and start it. Idempotent by id: (id, created).
        ``metadata`` (JSON) is journaled with it (e.g. a sub-workflow's parent and depth)."""
        assert self.engine is not None, "WorkflowService.serve() is not running"
        bound = spec.bind_inputs(inputs)
        wid = workflow_id or f"{spec.id}-{uuid.uuid4().hex[:12]}"

        def build() -> Graph:
            return graph_from_spec(spec)

        engine = self.engine
        _, created = await self._io(
            engine.submit_graph,
            build,
            (),
            bound,
            wid,
            {**(metadata or {}), "name": spec.name, "kind": "yaml"},
        )
        return wid, created

    async def view(self, workflow_id: str) -> WorkflowView:
        return await self._io(self._view, workflow_id)

    def _view(self, workflow_id: str) -> WorkflowView:
        row = self.storage.get_workflow(workflow_id)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        status = self._status(row)
        outputs = None
        if status is WorkflowStatus.SUCCESSFUL:
            outputs = load_task_output(self.storage, workflow_id, row.output_task or OUTPUTS_STEP)
        return WorkflowView(
            workflow_id=workflow_id,
            name=str(row.user_metadata.get("name", workflow_id)),
            status=status,
            error=_error(row, status),
            created_at=row.created_at,
            ended_at=row.end_time,
            outputs=outputs if isinstance(outputs, dict) else None,
            steps=self._steps(row, status),
        )

    def _status(self, row: WorkflowRow) -> WorkflowStatus:
        if self.engine is not None:
            live = self.engine.live_status(row.workflow_id)
            if live is not None:
                return live
        return stored_status(row, self.engine.owner if self.engine else None)

    def _steps(self, row: WorkflowRow, status: WorkflowStatus) -> list[StepView]:
        graph: Graph = loads(row.graph)
        rows: dict[str, TaskRow] = {t.task_id: t for t in self.storage.list_tasks(row.workflow_id)}
        views = []
        for step in graph.steps:
            if step.kind != "tool":
                continue
            r = rows.get(step.task_id)
            if r is None:
                state = "SKIPPED" if status.is_terminal() else "PENDING"
            elif r.status == "RUNNING" and status.is_terminal():
                state = "CANCELED"
            elif r.status == "RUNNING" and status in (
                WorkflowStatus.RESUMABLE,
                WorkflowStatus.QUARANTINED,
            ):
                state = "PENDING"
            elif r.status == "SUCCESSFUL" and (r.reason or "").startswith(SKIPPED_REASON):
                state = "SKIPPED"
            else:
                state = r.status
            views.append(
                StepView(
                    name=step.task_id,
                    tool=str(step.args[0]),
                    status=state,
                    node=r.node if r else None,
                    reason=r.reason if r else None,
                    error=r.error_text if r else None,
                    attempts=r.attempts if r else 0,
                    started_at=r.start_time if r else None,
                    ended_at=r.end_time if r else None,
                    placement=r.placement if r else None,
                )
            )
        return views

    async def cancel(self, workflow_id: str) -> WorkflowView:
        """Stop a workflow: running steps are abandoned, it ends CANCELED."""
        engine = self.engine
        assert engine is not None

        def go() -> None:
            if engine.cancel(workflow_id):
                self.storage.flush()
                return
            row = self.storage.get_workflow(workflow_id)
            if row is None:
                raise WorkflowNotFoundError(workflow_id)
            if WorkflowStatus(row.status).is_terminal():
                return

            def mark(db: Any) -> None:
                db.execute(
                    "UPDATE wf SET status = 'CANCELED', error_text = 'canceled' "
                    "WHERE workflow_id = ?",
                    (workflow_id,),
                )

            self.storage.write_sync(mark)

        await self._io(go)
        return await self.view(workflow_id)

    async def resume(self, workflow_id: str) -> WorkflowView:
        """Resume a workflow by hand: a QUARANTINED one too (the operator's decision), or
        one that is RESUMABLE, FAILED or CANCELED; it continues from its checkpoints.

        Raises :class:`WorkflowNotFoundError`, or :class:`WorkflowStillActiveError` for a
        workflow that is running."""
        engine = self.engine
        assert engine is not None

        def go() -> None:
            if self.storage.get_workflow(workflow_id) is None:
                raise WorkflowNotFoundError(workflow_id)
            try:
                engine.resume(workflow_id)
            except RuntimeError:  # running here, or in another live process
                raise WorkflowStillActiveError("resume", workflow_id) from None
            self.storage.flush()

        await self._io(go)
        log.info("workflow %r resumed by hand", workflow_id)
        return await self.view(workflow_id)

    async def delete(self, workflow_id: str) -> WorkflowView:
        """Delete a workflow that is not running (its journal rows and stored outputs);
        returns what it was. Raises :class:`WorkflowNotFoundError` or
        :class:`WorkflowStillActiveError`."""
        engine = self.engine
        assert engine is not None
        view = await self.view(workflow_id)
        await self._io(engine.delete, workflow_id)
        log.info("workflow %r deleted (it was %s)", workflow_id, view.status.value)
        return view

    async def wait(self, workflow_id: str) -> WorkflowView:
        """Wait until the workflow ends here (or is not live here); return its view."""
        engine = self.engine
        assert engine is not None
        fut = await self._io(engine.live_future, workflow_id)
        if fut is not None:
            await _done(fut)  # (no thread held while waiting: waits may be many)
            await self._io(self.storage.flush)
        return await self.view(workflow_id)

    async def metadata(self, workflow_id: str) -> dict[str, Any]:
        """What was journaled with the workflow at its submit (empty if it is unknown)."""
        row = await self._io(self.storage.get_workflow, workflow_id)
        return dict(row.user_metadata) if row is not None else {}

    async def known_ids(self) -> set[str]:
        """The ids of every workflow in the journal."""
        rows = await self._io(self.storage.list_workflows)
        return {row.workflow_id for row in rows}

    async def list_all(self) -> list[WorkflowView]:
        return await self._io(self._list)

    def _list(self) -> list[WorkflowView]:
        views = []
        for r in self.storage.list_workflows():
            status = self._status(r)
            views.append(
                WorkflowView(
                    workflow_id=r.workflow_id,
                    name=str(r.user_metadata.get("name", r.workflow_id)),
                    status=status,
                    error=_error(r, status),
                    created_at=r.created_at,
                    ended_at=r.end_time,
                    outputs=None,
                    steps=[],
                )
            )
        return views


def _error(row: WorkflowRow, status: WorkflowStatus) -> str | None:
    """What the status reply says went wrong: for a QUARANTINED workflow, why it is."""
    if status is WorkflowStatus.QUARANTINED and row.quarantine is not None:
        return f"quarantined: {row.quarantine}"
    return row.error_text


async def _done(fut: Future[Any]) -> None:
    """Wait until ``fut`` is done, whatever its outcome (read back from the journal)."""
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def on_done(_: Future[Any]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    fut.add_done_callback(on_done)
    await done.wait()
