"""The engine's thread: one queue of events, timers, and a journal commit per turn.

Everything that touches workflow state runs on this one thread, so that state needs no
locks. Other threads hand work over with :meth:`EngineLoop.call` (and wait for the
result) or :meth:`EngineLoop.post`; Ray completions arrive as ``("done", ...)`` events.
Journal writes made during a turn are committed together at its end (group commit in
the engine's own thread, no hop to a writer thread); with many steps in flight a commit
lingers briefly so that more completions share its fsync.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

from workflows.engine.storage import Storage
from workflows.errors import WorkflowError

log = logging.getLogger(__name__)

TURN_EVENTS = 512  # events the engine handles before it commits their journal writes
# with at least LINGER_INFLIGHT steps running, a commit waits up to LINGER_S for more writes
LINGER_INFLIGHT = int(os.environ.get("HIVEMESH_WF_LINGER_INFLIGHT", "8"))
LINGER_S = float(os.environ.get("HIVEMESH_WF_LINGER_MS", "2")) / 1000
# ... and with at least LINGER_LONG_INFLIGHT (a wide fan-out; more than a pipelined chain
# ever has) up to LINGER_LONG_S: a commit (BEGIN, COMMIT and its fsync) costs ~0.2-0.4 ms
# of CPU here, which the steps' workers need; a 5000-step fan-out made 301 commits with
# 10 ms (~28 us of commit CPU per step), 197 with 25 ms (~19 us)
LINGER_LONG_INFLIGHT = 256
LINGER_LONG_S = 0.025
STOPPED_CHECK_S = 0.5  # a caller waiting on the engine checks this often that it still runs


class TimerOwner(Protocol):
    timers: int  # how many of its timers are in the heap


class EngineLoop:
    """The thread, its queue, its timers and its journal batch. Subclasses handle their
    own events in :meth:`_handle` and say in :meth:`_inflight` how busy they are."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._q: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        # (when, seq, fn, owner): an owner's timers can be dropped together
        self._timers: list[tuple[float, int, Callable[[], None], TimerOwner | None]] = []
        self._timer_seq = itertools.count()
        self._stopped = False
        self._batch = storage.batch()
        self._thread = threading.Thread(target=self._main, name="workflows-engine", daemon=True)

    def _start_loop(self) -> None:
        self._thread.start()

    def _stop_loop(self) -> None:
        """Stop the thread after the events queued so far; commits what they wrote."""
        self._q.put(("stop",))
        self._thread.join(10)

    def _handle(self, event: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def _inflight(self, at_least: int) -> bool:
        """Whether at least ``at_least`` steps are running (then commits linger)."""
        return False

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the engine thread and return its result (or raise its error).
        Raises :class:`WorkflowError` if the engine stopped before running it."""
        if threading.current_thread() is self._thread:
            return fn()
        fut: Future[Any] = Future()
        self._q.put(("call", fn, fut))
        while True:
            try:
                return fut.result(timeout=STOPPED_CHECK_S)
            except TimeoutError:
                if not self._thread.is_alive() and not fut.done():
                    raise WorkflowError("the workflow engine was shut down") from None

    def _on_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _loop_alive(self) -> bool:
        return self._thread.is_alive()

    def _post(self, fn: Callable[[], None]) -> None:
        self._q.put(("fn", fn))

    def _schedule(
        self, when: float, fn: Callable[[], None], owner: TimerOwner | None = None
    ) -> None:
        heapq.heappush(self._timers, (when, next(self._timer_seq), fn, owner))
        if owner is not None:
            owner.timers += 1

    def _drop_timers(self, owner: TimerOwner) -> None:
        """Forget ``owner``'s timers (a run that ended: its durable sleeps)."""
        if owner.timers:
            self._timers = [t for t in self._timers if t[3] is not owner]
            heapq.heapify(self._timers)
            owner.timers = 0

    def _write(
        self,
        apply: Callable[[Any], None],
        on_commit: Callable[[], None] | None = None,
        blob: tuple[str, bytes] | None = None,
    ) -> None:
        """Journal a write; ``on_commit`` runs on the engine thread once it is durable.

        On the engine thread the write joins this turn's commit; from other threads it
        goes through the storage's writer thread."""
        if threading.current_thread() is self._thread:
            self._batch.add(apply, on_commit, blob)
        elif on_commit is None:
            self.storage.submit(apply, None, blob)
        else:
            done = on_commit
            self.storage.submit(apply, lambda: self._post(done), blob)

    def _main(self) -> None:
        """One turn: handle every queued event (up to a bound), fire due timers, then
        commit the journal writes they made in one transaction and run what waited for
        that commit. Completions that arrive during the commit's fsync are handled in the
        next turn: the busier the engine, the larger its commits."""
        q = self._q
        commit_due: float | None = None
        while not self._stopped:
            timeout = None
            if self._timers:
                timeout = max(0.0, self._timers[0][0] - time.monotonic())
            if commit_due is not None:
                wait = max(0.0, commit_due - time.monotonic())
                timeout = wait if timeout is None else min(timeout, wait)
            try:
                event: tuple[Any, ...] | None = q.get(timeout=timeout)
            except queue.Empty:
                event = None
            handled = 0
            while event is not None:
                try:
                    self._dispatch(event)
                except Exception:
                    log.exception("workflow engine error")
                handled += 1
                if handled >= TURN_EVENTS or self._stopped:
                    break
                try:
                    event = q.get_nowait()
                except queue.Empty:
                    event = None
            try:
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now:
                    _, _, fn, owner = heapq.heappop(self._timers)
                    if owner is not None:
                        owner.timers -= 1
                    fn()
            except Exception:
                log.exception("workflow engine error")
            if not self._batch:
                commit_due = None
                continue
            now = time.monotonic()
            if commit_due is None and LINGER_S > 0 and self._inflight(LINGER_INFLIGHT):
                # many steps in flight: let a few more completions join this commit
                long = self._inflight(LINGER_LONG_INFLIGHT)
                commit_due = now + (max(LINGER_S, LINGER_LONG_S) if long else LINGER_S)
            if commit_due is None or now >= commit_due:
                commit_due = None
                self._commit_writes()
        self._commit_writes()

    def _commit_writes(self) -> None:
        try:
            self._batch.commit()
        except Exception:
            log.exception("workflow engine error")

    def _dispatch(self, event: tuple[Any, ...]) -> None:
        kind = event[0]
        if kind == "call":
            _, fn, fut = event
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)
        elif kind == "fn":
            event[1]()
        elif kind == "stop":
            self._stopped = True
        else:
            self._handle(event)
