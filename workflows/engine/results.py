"""ObjectRefs for results that do not exist yet (``run_async``, ``get_output_async``).

A small actor holds one-shot slots: the caller gets ``actor.wait.remote(token)`` at once,
and the engine fills the slot when the workflow ends. Each ref has its own token, so a slot
is never stale and is freed once read.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from concurrent.futures import Future
from typing import Any

import ray
from ray import cloudpickle


@ray.remote
class _Results:
    """Holds workflow results so ``run_async`` can hand out ObjectRefs."""

    def __init__(self) -> None:
        self._results: dict[str, tuple[bool, Any]] = {}
        self._events: dict[str, asyncio.Event] = {}

    async def wait(self, workflow_id: str) -> Any:
        if workflow_id not in self._results:
            await self._events.setdefault(workflow_id, asyncio.Event()).wait()
        ok, payload = self._results.pop(workflow_id)
        self._events.pop(workflow_id, None)
        if ok:
            return payload
        raise cloudpickle.loads(payload)

    async def set(self, workflow_id: str, ok: bool, payload: Any) -> None:
        self._results[workflow_id] = (ok, payload)
        self._events.setdefault(workflow_id, asyncio.Event()).set()


class ResultSlots:
    """This engine's results actor, started on first use and killed at shutdown."""

    def __init__(self) -> None:
        self._actor: Any = None
        self._lock = threading.Lock()

    def ref_for(self, workflow_id: str, fut: Future[Any]) -> ray.ObjectRef:
        """An ObjectRef that resolves like ``fut``."""
        if fut.done() and fut.exception() is None:
            return ray.put(fut.result())
        actor = self._get_actor()
        token = f"{workflow_id}/{uuid.uuid4().hex}"
        ref = actor.wait.remote(token)

        def publish(f: Future[Any]) -> None:
            exc = f.exception()
            if not ray.is_initialized():
                return  # ray.shutdown(): the actor died with it (and a call would start Ray)
            # after a new ray.init() the old actor is gone too: nobody can wait for it
            with contextlib.suppress(Exception):
                if exc is None:
                    actor.set.remote(token, True, f.result())
                else:
                    # as bytes: an error that is a RayError (a worker died) given as a
                    # task argument makes Ray fail the task instead of running it
                    actor.set.remote(token, False, cloudpickle.dumps(exc))

        fut.add_done_callback(publish)
        return ref

    def _get_actor(self) -> Any:
        with self._lock:
            if self._actor is None:
                self._actor = _Results.options(  # type: ignore[attr-defined]
                    name=f"hivemesh-workflow-results-{uuid.uuid4().hex[:12]}",
                    num_cpus=0,
                    max_concurrency=10_000,
                ).remote()
            return self._actor

    def close(self, *, ray_lost: bool = False) -> None:
        """Kill the actor (unless its Ray is gone: it died with it)."""
        with self._lock:
            actor, self._actor = self._actor, None
        if actor is not None and not ray_lost:
            with contextlib.suppress(Exception):
                ray.kill(actor)
