"""The node's workflow-parse workers (node/parse_pool.py), as real processes: they parse as
the library does, and a worker that overruns its deadline, its CPU or its memory, or dies,
is a typed error, killed and replaced, while the pool goes on serving."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil
import pytest
import trio

from node.errors import ParserBusyError, ParseWorkerError
from node.parse_pool import GRACE_S, ParsePool
from tests import hostile_workflows as hostile
from tests.integration.harness import wait_until
from workflows.dsl import ParseLimits, WorkflowLimitError, parse_workflow
from workflows.errors import WorkflowDefinitionError

# A worker whose parse misbehaves on request, by the file's source name; otherwise real.
FAKE_WORKER = """\
import os, signal, sys, time
import workflows.dsl.worker as worker

real = worker.parse_workflow

def parse(data, *, source, limits):
    if source == "hang":
        time.sleep(3600)
    if source == "cpu":
        os.kill(os.getpid(), signal.SIGXCPU)
        time.sleep(5)
    if source == "crash":
        os._exit(7)
    return real(data, source=source, limits=limits)

worker.parse_workflow = parse
sys.exit(worker.main(sys.argv[3:]))  # (after '-m workflows.dsl.worker')
"""


def fake_python(tmp_path: Path) -> str:
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    python.chmod(0o755)
    return str(python)


def slowest_valid(keys: int = 49_000) -> bytes:
    """About the slowest file the default bounds let through (~1-2 s to parse)."""
    mapping = "{" + ",".join(f"k{i}: {i}" for i in range(keys)) + "}"
    return (
        "id: slow\nsteps:\n  - name: s\n    tool: util.echo\n    inputs:\n"
        f"      - name: value\n        value: {mapping}\n"
    ).encode()


async def test_the_pool_parses_as_the_library_does():
    pool = ParsePool(ParseLimits(), workers=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.serve)
        spec = await pool.parse(hostile.many_steps(3), "ok.yaml")
        assert spec == parse_workflow(hostile.many_steps(3), source="ok.yaml")
        for name in ("alias bomb in a default", "10,000-deep nesting", "control character"):
            data = hostile.HOSTILE[name]()
            with pytest.raises(WorkflowDefinitionError) as local:
                parse_workflow(data, source=name)
            with pytest.raises(WorkflowDefinitionError) as pooled:
                await pool.parse(data, name)
            assert type(pooled.value) is type(local.value)
            assert str(pooled.value) == str(local.value)
        with pytest.raises(WorkflowLimitError, match="larger than 1048576 bytes"):
            await pool.parse(hostile.big_file(), "big.yaml")  # refused before any worker
        assert len(pool.worker_pids()) == 2
        nursery.cancel_scope.cancel()


async def test_a_worker_past_its_deadline_is_killed_and_replaced(tmp_path: Path):
    limits = ParseLimits(timeout_s=1)
    pool = ParsePool(limits, workers=1, python=fake_python(tmp_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.serve)
        await wait_until(lambda: len(pool.worker_pids()) == 1, 60, "a worker")
        (first,) = pool.worker_pids()
        started = time.monotonic()
        with pytest.raises(WorkflowLimitError) as info:
            await pool.parse(hostile.many_steps(1), "hang")
        assert time.monotonic() - started < limits.timeout_s + GRACE_S + 5
        assert info.value.bound == "timeout_s"
        assert str(info.value) == "hang: parsing took longer than 1 s (workflow_files.timeout_s)"
        await wait_until(lambda: not psutil.pid_exists(first), 10, "the old worker to go")
        spec = await pool.parse(hostile.many_steps(1), "ok.yaml")  # a new worker answers
        assert spec.steps[0].name == "s0"
        assert pool.worker_pids() != [first]
        nursery.cancel_scope.cancel()


async def test_cpu_crash_and_memory_deaths_are_typed(tmp_path: Path):
    pool = ParsePool(ParseLimits(), workers=1, python=fake_python(tmp_path))
    small = ParsePool(ParseLimits(), workers=1, memory_mb=64)
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.serve)
        await nursery.start(small.serve)
        with pytest.raises(WorkflowLimitError) as cpu:
            await pool.parse(hostile.many_steps(1), "cpu")
        assert cpu.value.bound == "timeout_s"
        assert "parsing used more than 6 s of CPU" in str(cpu.value)
        with pytest.raises(ParseWorkerError, match=r"failed \(exit status 7\) while parsing crash"):
            await pool.parse(hostile.many_steps(1), "crash")
        with pytest.raises(WorkflowLimitError) as memory:
            await small.parse(slowest_valid(), "big.yaml")
        assert memory.value.bound == "worker_memory_mb"
        assert str(memory.value).endswith(
            "parsing needed more than 64 MiB (workflow_files.worker_memory_mb)"
        )
        # and both pools still parse
        assert (await pool.parse(hostile.many_steps(2), "ok")).id == "hostile"
        assert (await small.parse(hostile.many_steps(2), "ok")).id == "hostile"
        nursery.cancel_scope.cancel()


async def test_callers_wait_a_bounded_time_for_a_busy_pool(tmp_path: Path):
    pool = ParsePool(ParseLimits(timeout_s=1), workers=1, python=fake_python(tmp_path))
    idle = pool._idle.statistics
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.serve)
        await wait_until(lambda: idle().current_buffer_used == 1, 60, "a ready worker")

        async def hang() -> None:
            with pytest.raises(WorkflowLimitError):
                await pool.parse(hostile.many_steps(1), "hang")

        nursery.start_soon(hang)
        await wait_until(lambda: idle().current_buffer_used == 0, 10, "the worker taken")
        with pytest.raises(ParserBusyError, match="workers stayed busy for 1 s"):
            await pool.parse(hostile.many_steps(1), "ok")
        nursery.cancel_scope.cancel()


async def test_the_workers_memory_is_theirs():
    """Parsing the slowest file the bounds admit, again and again: the workers grow (within
    their address-space limit) by what the parse takes; this process does not."""
    me = psutil.Process(os.getpid())
    pool = ParsePool(ParseLimits(), workers=1)
    data = slowest_valid()
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.serve)
        await pool.parse(hostile.many_steps(1), "warm-up")
        (pid,) = pool.worker_pids()
        worker = psutil.Process(pid)
        worker_idle, before = worker.memory_info().rss, me.memory_info().rss
        for _ in range(4):
            await pool.parse(data, "slow.yaml")
        grown = me.memory_info().rss - before
        worker_grown = worker.memory_info().rss - worker_idle
        # here: the spec (a 49,000-key mapping) while it is built, a few MiB; there: the
        # composer's nodes and the objects built from them
        assert grown < 64 * 1024 * 1024, grown
        assert worker_grown > 16 * 1024 * 1024, worker_grown
        assert worker.memory_info().rss < 256 * 1024 * 1024
        nursery.cancel_scope.cancel()
