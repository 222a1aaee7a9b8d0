"""The engine's in-memory state of a running workflow: its tasks and their dependencies.

Pure bookkeeping (no Ray calls, no journal writes): the engine thread owns these objects.
"""

from __future__ import annotations

import concurrent.futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import ray

from workflows.engine.graph import StepDef, TaskIdAllocator
from workflows.status import WorkflowStatus

NO_RESULT: Any = object()
"""``Task.early_result`` when the task has not finished."""


@dataclass(eq=False, slots=True)
class Task:
    step: StepDef
    # WAITING, RUNNING, CONTINUED, DONE; ABANDONED: in a continuation whose error a step
    # up the chain caught (its output is never used, its completion is ignored)
    state: str = "WAITING"
    ref: ray.ObjectRef | None = None
    value: Any = None
    has_value: bool = False
    pending: int = 0
    # tasks that read this one's output: a tuple (of str, so the garbage collector stops
    # tracking it; a big workflow holds one per task for its whole run)
    dependents: tuple[str, ...] = ()
    consumers_left: int = 0
    # continued tasks whose output is this one's (rare: a tuple, no list per task to track)
    alias_parents: tuple[str, ...] = ()
    alias: str | None = None
    # the task whose continuation added this one (None: a task of the workflow's own DAG)
    creator: str | None = None
    started_at: float | None = None
    stored: bool = False  # output is in the journal (loaded lazily)
    timer_end: float | None = None
    node: str | None = None
    reason: str | None = None
    # pipelined: submitted to Ray before every step it reads had committed (with their
    # ObjectRefs, as plain Ray chains tasks); its result waits in ``early_result`` until
    # they have, so that results are committed in dependency order
    early: bool = False
    early_result: Any = NO_RESULT
    # a small output, kept in ``value``: once committed, readers get the value, not ``ref``
    inline: bool = False


@dataclass(eq=False)
class Run:
    workflow_id: str
    tasks: dict[str, Task]
    output: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    metadata: dict[str, Any]
    allocator: TaskIdAllocator
    future: Future[Any] = field(default_factory=Future)
    status: WorkflowStatus = WorkflowStatus.RUNNING
    running: dict[str, ray.ObjectRef] = field(default_factory=dict)
    polls: list[concurrent.futures.Future[Any]] = field(default_factory=list)
    tool_calls: dict[str, Future[Any]] = field(default_factory=dict)
    finished: bool = False
    start_time: float = 0.0
    waiters: dict[str, list[Future[Any]]] = field(default_factory=dict)
    timers: int = 0  # armed timers in the engine's heap
    # resumed, and no step committed since: its first commit is a clean point
    unclean: bool = False
    early: int = 0  # pipelined tasks not done yet (at most the engine's pipeline window)
    # running tasks with readers not pipelined because the window was full
    blocked: list[Task] = field(default_factory=list)


def add_steps(run: Run, steps: list[StepDef]) -> None:
    """Add ``steps`` (in dependency order) to ``run`` and count their dependencies."""
    for step in steps:
        run.tasks[step.task_id] = Task(step)
    readers: dict[str, list[str]] = {}
    for step in steps:
        task = run.tasks[step.task_id]
        for dep in step.deps:
            readers.setdefault(dep, []).append(step.task_id)
            run.tasks[dep].consumers_left += 1
        task.pending = len(step.deps)
    for dep, tids in readers.items():
        parent = run.tasks[dep]
        parent.dependents = (*parent.dependents, *tids)


def resolve_alias(run: Run, tid: str) -> Task:
    """The task that holds ``tid``'s output (a continued task's is its continuation's)."""
    task = run.tasks[tid]
    while task.alias is not None:
        task = run.tasks[task.alias]
    return task


def settle_done(run: Run, task: Task, settled: set[str]) -> None:
    """At resume: count a task that is already done off its dependents and alias parents."""
    stack = [task]
    while stack:
        t = stack.pop()
        if t.step.task_id in settled:
            continue
        settled.add(t.step.task_id)
        t.state = "DONE"
        for dep in t.dependents:
            run.tasks[dep].pending -= 1
        stack.extend(run.tasks[p] for p in t.alias_parents)


def no_longer_needed(run: Run) -> list[Task]:
    """At resume: ``checkpoint=False`` tasks whose every reader already committed.

    Nothing will read their output, so they are not run again; their output stays
    unavailable, as it was (``get_output(task_id=...)`` raises ``ValueError``)."""
    skipped: list[Task] = []
    for task in reversed(list(run.tasks.values())):  # dependents come after their deps
        step = task.step
        if (
            task.state != "WAITING"
            or step.checkpoint is not False
            or step.task_id == run.output
            or task.alias_parents
            or not task.dependents
        ):
            continue
        if all(run.tasks[d].state in ("DONE", "CONTINUED") for d in task.dependents):
            task.state = "DONE"
            skipped.append(task)
    return skipped


def continuation_subtree(run: Run, creator: str) -> list[Task]:
    """Every task that ``creator``'s continuation added, and theirs, and so on."""
    children: dict[str, list[Task]] = {}
    for task in run.tasks.values():
        if task.creator is not None:
            children.setdefault(task.creator, []).append(task)
    found: list[Task] = []
    stack = [creator]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child.step.task_id)
    return found
