"""The Ray-Workflows-compatible API (Ray 2.x DAG API): ``import workflows as workflow``.

One engine per process, created by :func:`init` (or on first use). Everything runs on
current Ray core; the journal lives in the storage folder given to :func:`init`.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

import ray
from ray.dag import DAGNode
from ray.remote_function import RemoteFunction

from workflows.engine import serde
from workflows.engine.graph import OPTIONS_LABEL, WORKFLOW_OPTION_KEYS, _event_step, _sleep_step
from workflows.engine.lifecycle import (
    DEFAULT_MAX_RESUME_ATTEMPTS,
    DEFAULT_RESUME_STALL_S,
    Engine,
)
from workflows.engine.limits import StepLimits
from workflows.engine.outputs import (
    default_workflow_id,
    execution_error,
    load_task_output,
    stored_status,
)
from workflows.engine.step import continuation
from workflows.engine.storage import Storage, WorkflowRow, resolve_storage_path
from workflows.errors import (
    WorkflowCancellationError,
    WorkflowError,
    WorkflowNotFoundError,
    WorkflowQuarantinedError,
)
from workflows.events import EventListener
from workflows.status import WorkflowStatus

__all__ = [
    "cancel",
    "continuation",
    "delete",
    "get_metadata",
    "get_output",
    "get_output_async",
    "get_status",
    "init",
    "is_initialized",
    "list_all",
    "options",
    "resume",
    "resume_all",
    "resume_async",
    "run",
    "run_async",
    "shutdown",
    "sleep",
    "wait_for_event",
]


class _Runtime:
    """The process's engine and storage (the API is module-level, like Ray Workflows')."""

    lock = threading.RLock()
    engine: Engine | None = None
    storage: Storage | None = None


def init(
    storage: str | os.PathLike[str] | None = None,
    max_running_workflows: int | None = None,
    max_pending_workflows: int | None = None,
    *,
    synchronous: str = "FULL",
    max_resume_attempts: int | None = DEFAULT_MAX_RESUME_ATTEMPTS,
    resume_stall_s: float | None = DEFAULT_RESUME_STALL_S,
    max_step_output_bytes: int | None = None,
    max_error_chars: int = StepLimits.max_error_chars,
    max_traceback_chars: int = StepLimits.max_traceback_chars,
) -> None:
    """Start the workflow engine (and Ray, if it is not running).

    ``storage`` is a folder or ``file://`` URL for the journal (default:
    ``$HIVEMESH_WORKFLOW_STORAGE``, else ``~/.hivemesh/workflows``). As in Ray Workflows,
    the two limits are ints (``TypeError`` otherwise), -1 means no limit, and they hold
    until the engine ends (:func:`shutdown` or ``ray.shutdown()``): calling ``init`` again
    with None keeps them, with other values raises ``ValueError``. Calling it again with
    another storage or other hivemesh settings replaces the engine if no workflow runs.

    hivemesh's own settings: a workflow resumed ``max_resume_attempts`` times in a row
    without completing a step while the process died each time, or whose resume had not
    finished starting after ``resume_stall_s``, is QUARANTINED: ``resume_all`` and ``run``
    leave it alone, ``resume`` resumes it by hand (None or 0: never). A step's checkpointed
    output is at most ``max_step_output_bytes`` (None: no limit), its error text at most
    ``max_error_chars`` and a traceback in it at most ``max_traceback_chars`` characters.
    """
    # as in Ray Workflows: the two limits are ints (or None), -1 means "no limit"
    for name, value in (
        ("max_running_workflows", max_running_workflows),
        ("max_pending_workflows", max_pending_workflows),
    ):
        if value is not None and not isinstance(value, int):
            raise TypeError(f"'{name}' must be None or an integer, not {type(value).__name__}")
    if max_running_workflows is not None and (
        max_running_workflows < -1 or max_running_workflows == 0
    ):
        raise ValueError("'max_running_workflows' must be a positive integer or use -1 as infinity")
    if max_pending_workflows is not None and max_pending_workflows < -1:
        raise ValueError(
            "'max_pending_workflows' must be a non-negative integer or use -1 as infinity"
        )
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError("synchronous must be 'FULL' or 'NORMAL'")
    if max_resume_attempts is not None and max_resume_attempts < 0:
        raise ValueError("max_resume_attempts must be non-negative (0 or None: never)")
    if resume_stall_s is not None and resume_stall_s < 0:
        raise ValueError("resume_stall_s must be non-negative (0 or None: no watchdog)")
    limits = StepLimits(max_step_output_bytes, max_error_chars, max_traceback_chars)
    resume_bounds = (max_resume_attempts or None, resume_stall_s or None)
    path = resolve_storage_path(storage)
    with _Runtime.lock:
        if not ray.is_initialized():
            ray.init()
        if _Runtime.engine is not None and _Runtime.engine.ray_lost():
            shutdown()  # it ended with its Ray: start afresh, as Ray Workflows did
        if _Runtime.engine is not None:
            # as in Ray Workflows: the limits hold until the engine ends (shutdown(), or
            # ray.shutdown()); None keeps them, other values raise ValueError
            running, pending = _Runtime.engine.max_running, _Runtime.engine.max_pending
            wanted_running = _no_limit(max_running_workflows, running)
            wanted_pending = _no_limit(max_pending_workflows, pending)
            if (wanted_running, wanted_pending) != (running, pending):
                raise ValueError(
                    "workflows.init() is called again but the init options do not match "
                    f"the original ones: max_running_workflows={_shown(running)} "
                    f"max_pending_workflows={_shown(pending)}, new: "
                    f"max_running_workflows={_shown(wanted_running)} "
                    f"max_pending_workflows={_shown(wanted_pending)} "
                    "(call workflows.shutdown() first to change them)"
                )
            max_running_workflows, max_pending_workflows = running, pending
            if (
                _Runtime.storage is not None
                and _Runtime.storage.root == path
                and _Runtime.storage.synchronous == synchronous
                and _Runtime.engine.limits == limits
                and (_Runtime.engine.max_resume_attempts, _Runtime.engine.resume_stall_s)
                == resume_bounds
            ):
                return
            if _Runtime.engine.active_count():
                raise RuntimeError(
                    "workflows are running: call workflows.init() with other settings only "
                    "when none is running (or call workflows.shutdown() first)"
                )
            shutdown()
        _Runtime.storage = Storage(path, synchronous=synchronous)  # type: ignore[arg-type]
        _Runtime.engine = Engine(
            _Runtime.storage,
            max_running_workflows=_no_limit(max_running_workflows, None),
            max_pending_workflows=_no_limit(max_pending_workflows, None),
            limits=limits,
            max_resume_attempts=max_resume_attempts,
            resume_stall_s=resume_stall_s,
        )


def _no_limit(value: int | None, current: int | None) -> int | None:
    """An ``init`` limit as the engine holds it: None keeps ``current``, -1 is no limit."""
    if value is None:
        return current
    return None if value == -1 else value


def _shown(limit: int | None) -> int:
    return -1 if limit is None else limit


def is_initialized() -> bool:
    """Whether this process has a workflow engine (one whose Ray was shut down has ended)."""
    return _Runtime.engine is not None and not _Runtime.engine.ray_lost()


def shutdown() -> None:
    """Stop the engine (running workflows become resumable) and close the storage."""
    with _Runtime.lock:
        if _Runtime.engine is not None:
            _Runtime.engine.shutdown()
        if _Runtime.storage is not None:
            _Runtime.storage.close()
        _Runtime.engine = None
        _Runtime.storage = None


def _engine() -> Engine:
    if _Runtime.engine is not None and _Runtime.engine.ray_lost():
        _restart_after_ray_shutdown()
    if _Runtime.engine is None:
        init()
    assert _Runtime.engine is not None
    return _Runtime.engine


def _restart_after_ray_shutdown() -> None:
    """The engine's Ray was shut down (``ray.shutdown()``), which in Ray Workflows ended
    the workflow runtime: end the engine (its workflows were handed back, RESUMABLE) and
    start a new one on the current Ray (``ray.init()`` if none) with the same storage and
    hivemesh settings; the two limits start afresh, as 2.47's new management actor's."""
    with _Runtime.lock:
        engine, storage = _Runtime.engine, _Runtime.storage
        if engine is None or storage is None or not engine.ray_lost():
            return
        shutdown()
        init(
            storage.root,
            synchronous=storage.synchronous,
            max_resume_attempts=engine.max_resume_attempts,
            resume_stall_s=engine.resume_stall_s,
            max_step_output_bytes=engine.limits.max_output_bytes,
            max_error_chars=engine.limits.max_error_chars,
            max_traceback_chars=engine.limits.max_traceback_chars,
        )


def _storage() -> Storage:
    _engine()
    assert _Runtime.storage is not None
    return _Runtime.storage


def _check_id(workflow_id: Any) -> str:
    if not isinstance(workflow_id, str):
        raise TypeError(f"workflow_id must be a str, not {type(workflow_id).__name__}")
    return workflow_id


def _check_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError("metadata must be a dict")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON serializable: {exc}") from None
    return dict(metadata)


def workflow_status(storage: Storage, engine: Engine | None, workflow_id: str) -> WorkflowStatus:
    if engine is not None:
        live = engine.live_status(workflow_id)
        if live is not None:
            return live
    row = storage.get_workflow(workflow_id)
    if row is None:
        raise WorkflowNotFoundError(workflow_id)
    return stored_status(row, engine.owner if engine else None)


# -- running ---------------------------------------------------------------------------------


def _start(
    dag: Any,
    args: tuple[Any, ...],
    workflow_id: str | None,
    metadata: dict[str, Any] | None,
    kwargs: dict[str, Any],
) -> tuple[str, Future[Any]]:
    if not isinstance(dag, DAGNode):
        raise TypeError(f"run() takes a DAG built with .bind(), not {type(dag).__name__}")
    wid = _check_id(workflow_id) if workflow_id is not None else default_workflow_id()
    meta = _check_metadata(metadata)
    return wid, _engine().start(dag, args, kwargs, wid, meta)


def run(
    dag: Any,
    *args: Any,
    workflow_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Run a workflow to completion and return its output.

    An id that already exists is resumed, not restarted: a finished workflow returns its
    stored output without running anything.
    """
    _, fut = _start(dag, args, workflow_id, metadata, kwargs)
    return fut.result()


def run_async(
    dag: Any,
    *args: Any,
    workflow_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> ray.ObjectRef:
    """Like :func:`run`, but return an ObjectRef of the output at once."""
    wid, fut = _start(dag, args, workflow_id, metadata, kwargs)
    return _engine().result_ref(wid, fut)


def resume(workflow_id: str) -> Any:
    """Run the steps of a workflow that have no committed output; return its output.

    A QUARANTINED workflow is resumed too: this is resuming it by hand."""
    return _engine().resume(_check_id(workflow_id)).result()


def resume_async(workflow_id: str) -> ray.ObjectRef:
    wid = _check_id(workflow_id)
    engine = _engine()
    return engine.result_ref(wid, engine.resume(wid))


def resume_all(include_failed: bool = False) -> list[tuple[str, ray.ObjectRef]]:
    """Resume every RESUMABLE workflow (and FAILED ones with ``include_failed``); never a
    QUARANTINED one (and a workflow whose resumes reached ``max_resume_attempts`` becomes
    QUARANTINED here instead of being resumed)."""
    wanted = {WorkflowStatus.RESUMABLE}
    if include_failed:
        wanted.add(WorkflowStatus.FAILED)
    engine = _engine()
    out = []
    for wid, status in list_all(wanted):
        try:
            out.append((wid, engine.result_ref(wid, engine.resume(wid, automatic=True))))
        except RuntimeError:
            continue  # someone else resumed it meanwhile
        except queue.Full:
            continue  # over max_pending_workflows: still RESUMABLE, resume it later
        except WorkflowQuarantinedError:
            continue  # quarantined now: resume it by hand
        del status
    return out


# -- inspecting ------------------------------------------------------------------------------


def get_status(workflow_id: str) -> WorkflowStatus:
    wid = _check_id(workflow_id)
    return workflow_status(_storage(), _engine(), wid)


def get_output(workflow_id: str, *, task_id: str | None = None) -> Any:
    """The output of a workflow (waits if it is running), or of one of its tasks."""
    wid = _check_id(workflow_id)
    return _output_future(wid, task_id).result()


def get_output_async(workflow_id: str, *, task_id: str | None = None) -> ray.ObjectRef:
    wid = _check_id(workflow_id)
    fut = _output_future(wid, task_id)
    return _engine().result_ref(f"{wid}\x00{task_id or ''}", fut)


def _output_future(wid: str, task_id: str | None) -> Future[Any]:
    engine = _engine()
    storage = _storage()
    if task_id is None:
        live = engine.live_future(wid)
        if live is not None:
            return live
    else:
        live_task = engine.task_future(wid, task_id)
        if live_task is not None:
            return live_task
    fut: Future[Any] = Future()
    row = storage.get_workflow(wid)
    if row is None:
        fut.set_exception(WorkflowNotFoundError(wid))
        return fut
    try:
        status = stored_status(row, engine.owner)
        if task_id is not None:
            try:
                fut.set_result(load_task_output(storage, wid, task_id))
            except ValueError:
                if status in (WorkflowStatus.RUNNING, WorkflowStatus.PENDING):
                    _poll_until_done(wid, fut, task_id)  # the task may not have run yet
                    return fut
                ended = _ended_error(row, status)
                if ended is None:
                    raise
                # as in the process that ran it: the task never finished because the
                # workflow failed or was canceled first
                fut.set_exception(ended)
            return fut
        if status is WorkflowStatus.SUCCESSFUL:
            fut.set_result(load_task_output(storage, wid, row.output_task or ""))
        elif status in (WorkflowStatus.CANCELED, WorkflowStatus.FAILED):
            fut.set_exception(_ended_error(row, status))
        elif status in (WorkflowStatus.RUNNING, WorkflowStatus.PENDING):
            _poll_until_done(wid, fut)
        else:
            fut.set_exception(
                WorkflowError(f"workflow {wid!r} is {status.value}: resume it to get its output")
            )
    except BaseException as exc:
        if not fut.done():
            fut.set_exception(exc)
    return fut


def _ended_error(row: WorkflowRow, status: WorkflowStatus) -> BaseException | None:
    """The error ``get_output`` raises for a canceled or failed workflow (else None)."""
    if status is WorkflowStatus.CANCELED:
        return WorkflowCancellationError(row.workflow_id)
    if status is WorkflowStatus.FAILED:
        cause = serde.loads(row.error) if row.error else None
        return execution_error(row.workflow_id, cause, row.error_text)
    return None


def _poll_until_done(wid: str, fut: Future[Any], task_id: str | None = None) -> None:
    """Another process runs it: wait for the stored result of the workflow (or of
    ``task_id``: until it is committed, or the workflow ends without it)."""

    def poll() -> None:
        import time

        while True:
            if task_id is not None:
                try:
                    fut.set_result(load_task_output(_storage(), wid, task_id))
                    return
                except ValueError:
                    pass
                except BaseException as exc:
                    fut.set_exception(exc)
                    return
            row = _storage().get_workflow(wid)
            if row is None:
                fut.set_exception(WorkflowNotFoundError(wid))
                return
            status = stored_status(row, None)
            if status not in (WorkflowStatus.RUNNING, WorkflowStatus.PENDING):
                inner = _output_future(wid, task_id)
                try:
                    fut.set_result(inner.result())
                except BaseException as exc:
                    fut.set_exception(exc)
                return
            time.sleep(0.2)

    threading.Thread(target=poll, daemon=True).start()


def get_metadata(workflow_id: str, task_id: str | None = None) -> dict[str, Any]:
    wid = _check_id(workflow_id)
    storage = _storage()
    row = storage.get_workflow(wid)
    if row is None:
        # Ray Workflows' words (a ValueError there too)
        raise WorkflowNotFoundError(wid, f"No such workflow_id {wid}")
    if task_id is None:
        status = get_status(wid)
        # as in Ray Workflows: a key only once it has a value, and an end time only for a
        # workflow that ended by itself (not while it runs or waits, nor when canceled)
        stats = {}
        if row.start_time is not None:
            stats["start_time"] = row.start_time
        if row.end_time is not None and status in (
            WorkflowStatus.SUCCESSFUL,
            WorkflowStatus.FAILED,
        ):
            stats["end_time"] = row.end_time
        return {"status": status.value, "user_metadata": row.user_metadata, "stats": stats}
    task = storage.get_task(wid, task_id)
    step = _find_step(storage, row, task_id)
    if step is None:
        raise ValueError(f"No such task_id {task_id} in workflow {wid}")
    stats = {}
    if task is not None:
        stats = {
            key: value
            for key, value in (("start_time", task.start_time), ("end_time", task.end_time))
            if value is not None
        }
    return {
        "task_id": task_id,
        "task_options": step.options_record(),
        "user_metadata": step.metadata,
        "stats": stats,
    }


def _find_step(storage: Storage, row: Any, task_id: str) -> Any:
    """A task's definition: in the workflow's graph or in a stored continuation."""
    graph = serde.loads(row.graph)
    for step in graph.steps:
        if step.task_id == task_id:
            return step
    for task in storage.list_tasks(row.workflow_id):
        if task.continuation is not None:
            for step in serde.loads(task.continuation).steps:
                if step.task_id == task_id:
                    return step
    return None


def list_all(
    status_filter: WorkflowStatus | str | Iterable[WorkflowStatus | str] | None = None,
) -> list[tuple[str, WorkflowStatus]]:
    """``[(workflow_id, status)]``, optionally only those with the given status(es)."""
    wanted: set[WorkflowStatus] | None = None
    if status_filter is not None:
        items = (
            [status_filter]
            if isinstance(status_filter, (str, WorkflowStatus))
            else list(status_filter)
        )
        wanted = set()
        for item in items:
            try:
                wanted.add(
                    WorkflowStatus(
                        item.value if isinstance(item, WorkflowStatus) else str(item).upper()
                    )
                )
            except ValueError:
                raise ValueError(f"unknown workflow status {item!r}") from None
    engine = _engine()
    out = []
    for row in _storage().list_workflows():
        live = engine.live_status(row.workflow_id)
        status = live if live is not None else stored_status(row, engine.owner)
        if wanted is None or status in wanted:
            out.append((row.workflow_id, status))
    return out


# -- controlling -----------------------------------------------------------------------------


def cancel(workflow_id: str) -> None:
    """Stop a workflow's running steps and mark it CANCELED."""
    wid = _check_id(workflow_id)
    engine = _engine()
    if engine.cancel(wid):
        _storage().flush()
        return
    storage = _storage()

    def mark(db: Any) -> None:
        # checked and written in one transaction: a workflow that finishes meanwhile
        # stays finished
        found = db.execute("SELECT status FROM wf WHERE workflow_id = ?", (wid,)).fetchone()
        if found is None:
            raise WorkflowNotFoundError(wid)
        if not WorkflowStatus(found[0]).is_terminal():
            db.execute("UPDATE wf SET status = 'CANCELED' WHERE workflow_id = ?", (wid,))

    storage.transact(mark)  # a live owner elsewhere sees it at its next heartbeat


def delete(workflow_id: str) -> None:
    """Remove a finished, resumable or quarantined workflow and its stored outputs."""
    _engine().delete(_check_id(workflow_id))


# -- building steps --------------------------------------------------------------------------


class options(dict[str, Any]):  # Ray Workflows' name: a class used like a function
    """Workflow options for a step, used as Ray Workflows' were, in either form::

        f.options(**workflow.options(task_id="x", catch_exceptions=True))

        @workflow.options(task_id="x")
        @ray.remote
        def f(): ...

    Accepts ``task_id``, ``metadata``, ``catch_exceptions`` and ``checkpoint``. As a
    decorator it sets the remote function's defaults (it returns the same function);
    workflow options given later with ``.options(**workflow.options(...))`` override them
    key by key, and other Ray options leave them as they are.
    """

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(WORKFLOW_OPTION_KEYS)
        if unknown:
            raise ValueError(
                f"invalid workflow option(s) {sorted(unknown)}; valid: {list(WORKFLOW_OPTION_KEYS)}"
            )
        if "task_id" in kwargs and not isinstance(kwargs["task_id"], str):
            raise ValueError("task_id must be a str")
        if "metadata" in kwargs:
            kwargs["metadata"] = _check_metadata(kwargs["metadata"])
        self.workflow_options = kwargs
        super().__init__(_labels={OPTIONS_LABEL: json.dumps(kwargs)})

    def __call__(self, f: Any) -> Any:
        if not isinstance(f, RemoteFunction):
            raise ValueError("Only apply 'workflow.options' to Ray remote functions.")
        f._default_options["_labels"] = _merged_labels(
            f._default_options.get("_labels"), self.workflow_options
        )
        if "options" not in vars(f):  # once: later decorators only change the defaults
            plain_options = f.options

            def merging_options(**task_options: Any) -> Any:
                # Ray replaces the whole ``_labels`` dict: keep the decorator's workflow
                # options under those given here, key by key (as Ray Workflows did)
                labels = task_options.get("_labels")
                if isinstance(labels, dict) and OPTIONS_LABEL in labels:
                    given = json.loads(labels[OPTIONS_LABEL])
                    rest = {k: v for k, v in labels.items() if k != OPTIONS_LABEL}
                    base = f._default_options.get("_labels") or {}
                    task_options["_labels"] = _merged_labels({**base, **rest}, given)
                return plain_options(**task_options)

            f.options = merging_options  # type: ignore[method-assign]
        return f


def _merged_labels(labels: Any, workflow_options: dict[str, Any]) -> dict[str, Any]:
    """Ray ``_labels`` with ``workflow_options`` merged over the workflow options in them."""
    merged = dict(labels) if isinstance(labels, dict) else {}
    raw = merged.get(OPTIONS_LABEL)
    current = json.loads(raw) if raw else {}
    merged[OPTIONS_LABEL] = json.dumps({**current, **workflow_options})
    return merged


def sleep(duration: float) -> DAGNode:
    """A step that ends ``duration`` seconds after it starts; its end time is durable."""
    return ray.remote(_sleep_step).bind(float(duration))


def wait_for_event(event_listener_type: type, *args: Any, **kwargs: Any) -> DAGNode:
    """A step whose output is the event ``event_listener_type().poll_for_event(*args)``
    returns; the event is checkpointed before ``event_checkpointed(event)`` is called.
    The wait runs in the driver's event loop, not in a Ray worker."""
    if not (
        isinstance(event_listener_type, type) and issubclass(event_listener_type, EventListener)
    ):
        raise TypeError(f"{event_listener_type!r} is not a subclass of EventListener")
    return ray.remote(_event_step).bind(event_listener_type, args, kwargs)


__all__ += ["continuation"]
