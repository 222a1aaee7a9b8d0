"""Runs YAML workflows: a DAG of tool steps, journaled step by step.

The runner owns ordering, references and durability; *where* a step runs is the
:class:`StepExecutor`'s business (the node's executor places steps locally on Ray or on a
peer). A step starts as soon as every step it references has a committed result; independent
steps run in parallel. A step's outputs are committed before anything that depends on them
starts, so a restarted runner resumes without rerunning finished steps.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import trio

from workflows.dsl import StepSpec, WorkflowSpec
from workflows.errors import WorkflowError, WorkflowNotFoundError
from workflows.journal import Journal, StepRecord, WorkflowRecord
from workflows.refs import resolve
from workflows.status import StepStatus, WorkflowStatus

log = logging.getLogger(__name__)
T = TypeVar("T")


class StepExecutionError(WorkflowError):
    """A step could not produce a result. ``node``/``reason`` say where it last was."""

    def __init__(self, message: str, *, node: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        self.node = node
        self.reason = reason


@dataclass(frozen=True)
class StepRequest:
    workflow_id: str
    step: str
    tool: str
    version: str | None
    args: dict[str, Any]

    @property
    def idempotency_key(self) -> str:
        return f"{self.workflow_id}/{self.step}"


@dataclass(frozen=True)
class StepOutcome:
    outputs: dict[str, Any]
    node: str
    reason: str


PlacementCallback = Callable[[str, str], Awaitable[None]]


class StepExecutor(Protocol):
    async def execute(self, request: StepRequest, placed: PlacementCallback) -> StepOutcome:
        """Run one step somewhere. Call ``placed(node, reason)`` before each attempt.
        Raise :class:`StepExecutionError` on failure."""
        ...


class AsyncJournal:
    """The journal from trio: every call runs in one worker thread (the single writer)."""

    def __init__(self, journal: Journal) -> None:
        self.sync = journal
        self._limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._limiter)


class WorkflowRunner:
    """Drives workflows to completion inside the nursery given to :meth:`serve`."""

    def __init__(self, journal: AsyncJournal, executor: StepExecutor) -> None:
        self.journal = journal
        self.executor = executor
        self._nursery: trio.Nursery | None = None
        self._done: dict[str, trio.Event] = {}

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; resumes every workflow that was interrupted."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            interrupted = await self.journal.call(
                self.journal.sync.list_workflows,
                {WorkflowStatus.RUNNING, WorkflowStatus.PENDING, WorkflowStatus.RESUMABLE},
            )
            for record in interrupted:
                log.info("resuming interrupted workflow %s", record.workflow_id)
                await self.journal.call(self.journal.sync.reset_running_steps, record.workflow_id)
                self._start(record.workflow_id)
            task_status.started()
            await trio.sleep_forever()

    def _start(self, workflow_id: str) -> None:
        if self._nursery is None:
            raise RuntimeError("WorkflowRunner.serve() is not running")
        if workflow_id in self._done and not self._done[workflow_id].is_set():
            return
        self._done[workflow_id] = trio.Event()
        self._nursery.start_soon(self._run, workflow_id)

    async def submit(
        self, spec: WorkflowSpec, inputs: Mapping[str, Any], workflow_id: str | None = None
    ) -> tuple[str, bool]:
        """Journal a workflow and start it. Idempotent by id: returns (id, created)."""
        bound = spec.bind_inputs(inputs)
        wid = workflow_id or f"{spec.id}-{uuid.uuid4().hex[:12]}"
        created = await self.journal.call(
            self.journal.sync.create_workflow,
            wid,
            name=spec.name,
            kind="yaml",
            spec=spec.to_json(),
            inputs=bound,
            steps=[(s.name, s.tool) for s in spec.steps],
        )
        if created:
            self._start(wid)
        return wid, created

    async def get(self, workflow_id: str) -> tuple[WorkflowRecord, list[StepRecord]]:
        record = await self.journal.call(self.journal.sync.get_workflow, workflow_id)
        if record is None:
            raise WorkflowNotFoundError(workflow_id)
        steps = await self.journal.call(self.journal.sync.list_steps, workflow_id)
        return record, steps

    async def wait(self, workflow_id: str) -> WorkflowRecord:
        """Wait until the workflow is in a terminal state; return its record."""
        record, _ = await self.get(workflow_id)
        while not record.status.is_terminal():
            event = self._done.get(workflow_id)
            if event is None:  # not live here: a resumable record nobody runs
                return record
            await event.wait()
            record, _ = await self.get(workflow_id)
        return record

    async def _run(self, workflow_id: str) -> None:
        try:
            await self._drive(workflow_id)
        except Exception as exc:  # the runner must survive any one workflow's failure
            log.exception("workflow %s crashed the runner", workflow_id)
            await self.journal.call(
                self.journal.sync.set_workflow_status,
                workflow_id,
                WorkflowStatus.FAILED,
                error=f"internal error: {type(exc).__name__}: {exc}",
            )
        finally:
            self._done[workflow_id].set()

    async def _drive(self, workflow_id: str) -> None:
        record, steps = await self.get(workflow_id)
        if record.status.is_terminal():
            return
        spec = WorkflowSpec.from_json(record.spec)
        outputs: dict[str, dict[str, Any]] = {
            s.name: s.outputs or {} for s in steps if s.status is StepStatus.SUCCESSFUL
        }
        started: set[str] = set(outputs)
        failure: list[str] = []
        send, receive = trio.open_memory_channel[tuple[str, BaseException | None]](len(spec.steps))

        async with trio.open_nursery() as nursery:
            running = 0
            while True:
                if not failure:
                    for step in spec.ready_steps(finished=outputs.keys(), started=started):
                        started.add(step.name)
                        running += 1
                        nursery.start_soon(
                            self._run_step,
                            workflow_id,
                            spec,
                            record.inputs,
                            step,
                            outputs,
                            send.clone(),
                        )
                if running == 0:
                    break
                name, error = await receive.receive()
                running -= 1
                if error is not None and not failure:
                    failure.append(f"step {name!r} failed: {error}")
                    nursery.cancel_scope.cancel()

        if failure:
            await self.journal.call(
                self.journal.sync.set_workflow_status,
                workflow_id,
                WorkflowStatus.FAILED,
                error=failure[0],
            )
            return
        try:
            final = self._workflow_outputs(spec, record.inputs, outputs)
        except WorkflowError as exc:
            await self.journal.call(
                self.journal.sync.set_workflow_status,
                workflow_id,
                WorkflowStatus.FAILED,
                error=f"workflow outputs: {exc}",
            )
            return
        await self.journal.call(
            self.journal.sync.set_workflow_status,
            workflow_id,
            WorkflowStatus.SUCCESSFUL,
            outputs=final,
        )

    async def _run_step(
        self,
        workflow_id: str,
        spec: WorkflowSpec,
        inputs: dict[str, Any],
        step: StepSpec,
        outputs: dict[str, dict[str, Any]],
        done: trio.MemorySendChannel[tuple[str, BaseException | None]],
    ) -> None:
        async with done:
            error: BaseException | None = None
            try:
                outputs[step.name] = await self._execute(workflow_id, inputs, step, outputs)
            except WorkflowError as exc:
                error = exc
            await done.send((step.name, error))

    async def _execute(
        self,
        workflow_id: str,
        inputs: dict[str, Any],
        step: StepSpec,
        outputs: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        j = self.journal
        try:
            args = {b.name: resolve(b.value, inputs, outputs) for b in step.inputs}
        except WorkflowError as exc:
            await j.call(
                j.sync.commit_step_failure, workflow_id, step.name, str(exc), node=None, reason=None
            )
            raise
        request = StepRequest(workflow_id, step.name, step.tool, step.version, args)
        first = True

        async def placed(node: str, reason: str) -> None:
            nonlocal first
            if first:
                first = False
                await j.call(j.sync.step_started, workflow_id, step.name, node=node, reason=reason)
            else:
                await j.call(j.sync.step_placed, workflow_id, step.name, node=node, reason=reason)

        try:
            outcome = await self.executor.execute(request, placed)
            missing = [o.name for o in step.outputs if o.name not in outcome.outputs]
            if missing:
                raise StepExecutionError(
                    f"tool {step.tool!r} returned no output {missing[0]!r} "
                    f"(it returned {sorted(outcome.outputs)})",
                    node=outcome.node,
                    reason=outcome.reason,
                )
        except StepExecutionError as exc:
            await j.call(
                j.sync.commit_step_failure,
                workflow_id,
                step.name,
                exc.message,
                node=exc.node,
                reason=exc.reason,
            )
            raise
        await j.call(
            j.sync.commit_step_result,
            workflow_id,
            step.name,
            outcome.outputs,
            node=outcome.node,
            reason=outcome.reason,
        )
        return outcome.outputs

    @staticmethod
    def _workflow_outputs(
        spec: WorkflowSpec, inputs: dict[str, Any], outputs: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        if not spec.outputs:
            return {name: dict(values) for name, values in outputs.items()}
        return {o.name: resolve(o.value, inputs, outputs) for o in spec.outputs}
