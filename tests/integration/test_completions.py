"""The engine's completion watcher on a real Ray: with many tasks in flight, finished ones
are collected in batches, and none waits behind older ones that run long."""

from __future__ import annotations

import asyncio
import queue
import time
from typing import Any

import pytest
import ray

from workflows.engine.completions import DIRECT_BELOW, WINDOW, Completions


@ray.remote(max_concurrency=1000)
class Gate:
    def __init__(self) -> None:
        self._open = asyncio.Event()

    async def wait(self, value: int) -> int:
        await self._open.wait()
        return value

    async def fail(self) -> None:
        raise ValueError("boom")

    def open(self) -> None:
        self._open.set()


def _drain(got: queue.SimpleQueue[list[tuple[Any, Any]]], want: int, timeout_s: float) -> dict:
    found: dict[Any, Any] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < want:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"only {len(found)} of {want} completions after {timeout_s} s")
        try:
            found.update(got.get(timeout=left))
        except queue.Empty:
            continue
    return found


def test_quick_tasks_are_not_stuck_behind_long_ones(ray_cluster: None) -> None:
    got: queue.SimpleQueue[list[tuple[Any, Any]]] = queue.SimpleQueue()
    completions = Completions(got.put)
    gate = Gate.remote()  # type: ignore[attr-defined]
    try:
        slow = DIRECT_BELOW + 2 * WINDOW  # more than the watcher's window can hold
        for i in range(slow):
            completions.watch(gate.wait.remote(i), ("slow", i))
        quick = 10
        for i in range(quick):
            completions.watch(ray.put(i * i), ("quick", i))
        completions.watch(gate.fail.remote(), ("failed", 0))
        early = _drain(got, quick + 1, timeout_s=10)  # the watcher looks past the window
        assert {k: v for k, v in early.items() if k[0] == "quick"} == {
            ("quick", i): i * i for i in range(quick)
        }
        failed = early[("failed", 0)]
        assert isinstance(failed, ray.exceptions.RayTaskError)
        assert isinstance(failed, ValueError)

        ray.get(gate.open.remote())
        late = _drain(got, slow, timeout_s=30)
        assert late == {("slow", i): i for i in range(slow)}
        assert got.empty()  # each task delivered once
    finally:
        completions.close()
        ray.kill(gate)


@pytest.mark.parametrize("count", [1, DIRECT_BELOW + 1, 300])
def test_every_task_is_delivered_once(ray_cluster: None, count: int) -> None:
    got: queue.SimpleQueue[list[tuple[Any, Any]]] = queue.SimpleQueue()
    completions = Completions(got.put)
    try:
        for i in range(count):
            completions.watch(ray.put(i), i)
        assert _drain(got, count, timeout_s=30) == {i: i for i in range(count)}
        time.sleep(0.1)
        assert got.empty()
    finally:
        completions.close()


def test_a_paused_watcher_delivers_nothing_until_the_pause_ends(ray_cluster: None) -> None:
    got: queue.SimpleQueue[list[tuple[Any, Any]]] = queue.SimpleQueue()
    completions = Completions(got.put)
    gate = Gate.remote()  # type: ignore[attr-defined]
    count = DIRECT_BELOW + 40
    try:
        with completions.paused():
            # none finishes yet: the first DIRECT_BELOW get their own callbacks, the rest
            # go to the watcher
            for i in range(count):
                completions.watch(gate.wait.remote(i), i)
            ray.get(gate.open.remote())
            direct = _drain(got, DIRECT_BELOW, timeout_s=10)
            time.sleep(0.5)
            assert got.empty()  # the watcher holds the rest while paused
        rest = _drain(got, count - DIRECT_BELOW, timeout_s=10)
        assert {**direct, **rest} == {i: i for i in range(count)}
    finally:
        completions.close()
        ray.kill(gate)
