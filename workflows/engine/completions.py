"""How the engine learns that a step's Ray task finished.

Few tasks in flight (a chain): ``ObjectRef._on_completed``, the mechanism behind
``ObjectRef.future()``, calls back at once. It costs a callback per task in a Ray thread
(the value is deserialized one object at a time), which adds up when hundreds of tasks
finish together. So with many tasks in flight the rest go to a watcher thread that asks
Ray for finished ones in batches (``ray.wait`` over a small window of the oldest, then one
``ray.get`` for all that are ready): per task that is several times cheaper, and it leaves
the CPU to the workers. The more tasks are in flight, the longer a batch may gather
(``LINGER_MIN_S`` at ``DIRECT_BELOW`` tasks, up to ``LINGER_MAX_S``): with many tasks
finishing per millisecond one more millisecond delays little, and each ``ray.wait``,
``ray.get`` and engine turn saved is CPU the workers get instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ray
from ray.exceptions import RayError

log = logging.getLogger(__name__)

DIRECT_BELOW = 16  # with fewer tasks in flight than this, a task gets its own callback
# (a ray.wait and a ray.get cost ~0.1-0.2 ms each besides their per-object cost: a
# 1000-step fan-out spent ~45 us per step here with batches of 32 lingering up to 4 ms,
# ~25 us with these)
WINDOW = 128  # refs one ray.wait looks at (the oldest first: tasks mostly end in order)
BATCH = 64  # ray.wait returns once this many are ready ...
LINGER_MIN_S = 0.001  # ... or after this long (with DIRECT_BELOW tasks in flight) ...
LINGER_MAX_S = 0.010  # ... growing with the tasks in flight up to this (at 160)
IDLE_S = 0.05  # with none ready, look again (for new tasks, other windows) this often


class Completions:
    """Calls ``deliver(items)`` with ``(info, result)`` pairs for finished tasks, where
    ``result`` is the task's value or the ``RayError`` it failed with (as ``_on_completed``
    gives it). ``deliver`` runs in a Ray callback thread or in the watcher thread."""

    def __init__(self, deliver: Callable[[list[tuple[Any, Any]]], None]) -> None:
        self._deliver = deliver
        self._lock = threading.Condition()
        self._incoming: list[tuple[ray.ObjectRef, Any]] = []
        self._direct = 0  # tasks whose callback has not fired yet
        self._watched = 0  # tasks the watcher has not delivered yet
        self._closed = False
        self._paused = 0
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the watcher meanwhile: the engine submits a burst of tasks, and
        collecting their completions at the same time only competes with it for the
        GIL (they are collected afterwards, in larger batches)."""
        with self._lock:
            self._paused += 1
        try:
            yield
        finally:
            with self._lock:
                self._paused -= 1
                if not self._paused:
                    self._lock.notify()

    def watch(self, ref: ray.ObjectRef, info: Any) -> None:
        with self._lock:
            if self._direct + self._watched < DIRECT_BELOW:
                self._direct += 1
                direct = True
            else:
                self._watched += 1
                self._incoming.append((ref, info))
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._watch_loop, name="workflows-completions", daemon=True
                    )
                    self._thread.start()
                elif len(self._incoming) == 1:
                    self._lock.notify()
                direct = False
        if direct:
            # the callback holds the ref: Ray aborts the process if a ref with a pending
            # callback is freed (ObjectUnknownOwner in CoreWorker::PlasmaCallback)
            ref._on_completed(functools.partial(self._direct_done, info, ref))

    def _direct_done(self, info: Any, ref: ray.ObjectRef, result: Any) -> None:
        del ref  # held until now
        with self._lock:
            self._direct -= 1
        self._deliver([(info, result)])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()

    def _watch_loop(self) -> None:
        pending: dict[ray.ObjectRef, Any] = {}  # in the order the tasks were submitted
        while True:
            with self._lock:
                while (self._paused or (not self._incoming and not pending)) and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                for ref, info in self._incoming:
                    pending[ref] = info
                self._incoming.clear()
            if not ray.is_initialized():
                # ray.shutdown(): the tasks died with it, and a Ray call now would start a
                # new Ray (Ray's auto-init) from this thread
                return
            try:
                self._collect(pending)
            except Exception:  # Ray shutting down: nothing more will finish
                log.exception("workflow completion watcher failed")
                return

    def _collect(self, pending: dict[ray.ObjectRef, Any]) -> None:
        window = list(_first(pending, WINDOW))
        want = min(len(window), BATCH)
        linger = min(LINGER_MAX_S, max(LINGER_MIN_S, LINGER_MIN_S * len(pending) / DIRECT_BELOW))
        # while tasks keep finishing, one ray.wait gathers a batch: it returns once
        # `want` are ready or after `linger`, so that one ray.get serves several
        ready, _ = ray.wait(window, num_returns=want, timeout=linger, fetch_local=True)
        if not ready:
            # none finished: block until one does (new refs are picked up within IDLE_S),
            # then linger as above
            ready, _ = ray.wait(window, num_returns=1, timeout=IDLE_S, fetch_local=True)
            if ready and want > 1:
                ready, _ = ray.wait(window, num_returns=want, timeout=linger, fetch_local=True)
        if not ready:
            if len(pending) > WINDOW:
                # the oldest are long-running: look further next time (rotate them back)
                for ref in window:
                    pending[ref] = pending.pop(ref)
            return
        try:
            values = ray.get(ready)
        except Exception:
            values = [_get_one(ref) for ref in ready]
        items = [(pending.pop(ref), value) for ref, value in zip(ready, values, strict=True)]
        with self._lock:
            self._watched -= len(items)
        self._deliver(items)


def _first(pending: dict[ray.ObjectRef, Any], n: int) -> Any:
    for i, ref in enumerate(pending):
        if i >= n:
            return
        yield ref


def _get_one(ref: ray.ObjectRef) -> Any:
    try:
        return ray.get(ref)
    except RayError as exc:
        return exc
