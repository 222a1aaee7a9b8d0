"""Steps that wait: durable ``sleep`` timers and ``wait_for_event`` listeners.

A sleep's end time is journaled when the step starts, so a resumed workflow waits only
for what is left. Event listeners run in an asyncio thread of their own; an event is
journaled as the step's output before ``event_checkpointed`` is called.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

from workflows.engine.host import StepHost
from workflows.engine.runstate import Run, Task


class WaitSteps:
    """The engine's part for sleep and event steps (runs on the engine thread)."""

    def __init__(self, engine: StepHost) -> None:
        self._engine = engine
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="workflows-events", daemon=True
        )
        self._loop_thread.start()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def start_sleep(self, run: Run, task: Task, duration: float) -> None:
        tid = task.step.task_id
        if task.timer_end is None:
            end = time.time() + duration
            task.timer_end = end
            wid = run.workflow_id

            def persist(db: Any) -> None:
                db.execute(
                    "INSERT INTO task(workflow_id, task_id, status, timer_end, start_time)"
                    " VALUES (?, ?, 'RUNNING', ?, ?) ON CONFLICT(workflow_id, task_id)"
                    " DO UPDATE SET timer_end = excluded.timer_end",
                    (wid, tid, end, task.started_at),
                )

            self._engine._write(persist, lambda: self._arm(run, task))
        else:
            self._arm(run, task)

    def _arm(self, run: Run, task: Task) -> None:
        assert task.timer_end is not None
        delay = max(0.0, task.timer_end - time.time())

        def fire() -> None:
            if not run.finished:
                self._engine._succeed(run, task, None)  # like Ray Workflows: a sleep outputs None

        self._engine._schedule(time.monotonic() + delay, fire, run)

    def start_event(self, run: Run, task: Task, args: tuple[Any, ...]) -> None:
        listener_cls, l_args, l_kwargs = args
        listener = listener_cls()
        task.value = listener
        fut = asyncio.run_coroutine_threadsafe(
            listener.poll_for_event(*l_args, **l_kwargs), self._loop
        )
        run.polls.append(fut)
        tid = task.step.task_id

        def done(f: concurrent.futures.Future[Any]) -> None:
            self._engine._post(lambda: self._on_event_done(run, tid, f))

        fut.add_done_callback(done)

    def _on_event_done(self, run: Run, tid: str, fut: concurrent.futures.Future[Any]) -> None:
        task = run.tasks[tid]
        if run.finished:
            return
        listener = task.value
        task.value = None
        exc = fut.exception()
        if exc is not None:
            self._engine._fail(run, exc, tid)
            return

        event = fut.result()

        def after_commit() -> None:
            done = asyncio.run_coroutine_threadsafe(
                _maybe_await(listener.event_checkpointed(event))
                if hasattr(listener, "event_checkpointed")
                else _noop(),
                self._loop,
            )
            engine = self._engine
            done.add_done_callback(lambda _f: engine._post(lambda: engine._on_committed(run, tid)))

        self._engine._succeed(run, task, event, on_commit=after_commit)


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value):
        return await value
    return value


async def _noop() -> None:
    return None
