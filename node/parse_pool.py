"""Workflow files sent to the node are parsed in a small pool of worker processes.

Why processes and not a thread: parsing is CPU-bound Python (and C that holds the GIL),
so a thread stalls the trio loop in proportion to the file: measured with the slowest file
the default bounds admit (a 49,000-key mapping, ~1.8 s to parse), a thread made the loop
late by up to 140-410 ms and a TCP echo's 99th percentile 32-87 ms, against 36 ms and
0.3-6 ms with a worker process (scripts/bench/hostile_parse.py prints the node's figures).
A process also keeps the parse's memory out of the node (RLIMIT_AS caps it; Python's
arenas would otherwise stay grown), and a process that ignores its deadline can be
killed, which a thread cannot.

The bounds themselves (:class:`~workflows.dsl.ParseLimits`) are enforced inside the
worker by counting, which is what makes the errors precise (bound, limit, line); the
process adds a second, blunt layer for anything the counting would miss: RLIMIT_AS
(``worker_memory_mb``), RLIMIT_CPU and a wall-clock bound (``timeout_s`` + 1 s), past
which the worker is killed and replaced. Each worker parses one file at a time; a caller
waits at most ``timeout_s`` for a free one (:class:`ParserBusyError`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import trio

import workflows
from node.errors import ParserBusyError, ParseWorkerError
from workflows.dsl import ParseLimits, WorkflowSpec, workflow_bytes
from workflows.dsl.worker import (
    EXIT_MEMORY,
    LENGTH,
    MAX_HEADER,
    READY,
    error_from_fields,
    frame,
)
from workflows.errors import WorkflowLimitError

log = logging.getLogger(__name__)

GRACE_S = 1.0  # beyond timeout_s, before a worker that has not answered is killed
START_TIMEOUT_S = 60.0  # for a new worker to import and say it is ready
_STDERR_CHUNK = 1024  # a worker's stderr is kept as its last 8 such chunks, for the log


class _WorkerGone(Exception):
    """The worker's stdout ended, or it broke the framing."""


class _Worker:
    """One worker process and the reading side of its pipe."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.pid = process.pid
        self.served = 0
        self.stderr_tail: deque[bytes] = deque(maxlen=8)
        self._buffer = bytearray()

    async def _read_exactly(self, size: int) -> bytes:
        assert self.process.stdout is not None
        while len(self._buffer) < size:
            chunk = await self.process.stdout.receive_some(max(65536, size - len(self._buffer)))
            if not chunk:
                raise _WorkerGone("its output ended")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    async def read_frame(self, limit: int) -> bytes:
        (size,) = LENGTH.unpack(await self._read_exactly(LENGTH.size))
        if size > limit:
            raise _WorkerGone(f"it sent a frame of {size} bytes, more than {limit}")
        return await self._read_exactly(size)

    async def send(self, data: bytes) -> None:
        assert self.process.stdin is not None
        try:
            await self.process.stdin.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _WorkerGone("its input is closed") from None

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


class ParsePool:
    """Parse workflow files in ``workers`` processes, within ``limits``.

    Run :meth:`serve` in a nursery (``await nursery.start(pool.serve)``), then call
    :meth:`parse` from any task. ``python`` runs the workers (default: this interpreter).
    """

    def __init__(
        self,
        limits: ParseLimits,
        *,
        workers: int = 2,
        memory_mb: int = 256,
        python: str = sys.executable,
    ) -> None:
        self.limits = limits
        self.workers = workers
        self.memory_mb = memory_mb
        self.python = python
        self._send, self._idle = trio.open_memory_channel[_Worker](workers)
        self._all: set[_Worker] = set()
        self._nursery: trio.Nursery | None = None
        self._failed_starts = 0

    # -- running -------------------------------------------------------------------------

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep ``workers`` workers running until cancelled; then kill them all."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for _ in range(self.workers):
                    nursery.start_soon(self._spawn)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for worker in self._all:
                worker.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                for worker in list(self._all):
                    await worker.process.wait()

    def worker_pids(self) -> list[int]:
        """The process ids of the live workers (for measuring them)."""
        return sorted(w.pid for w in self._all if w.process.returncode is None)

    async def _spawn(self) -> None:
        """Start one worker and put it in the idle queue once it is ready (with a backoff
        after workers that failed to start, so a broken install does not spin)."""
        if self._failed_starts:
            await trio.sleep(min(30.0, 0.5 * 2 ** min(self._failed_starts, 6)))
        env = dict(os.environ)
        # the workers import this node's own 'workflows', wherever it was installed from
        root = str(Path(workflows.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        try:
            process = await trio.lowlevel.open_process(
                [self.python, "-m", "workflows.dsl.worker", "--memory-mb", str(self.memory_mb)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            self._failed_starts += 1
            log.error("cannot start a workflow-parse worker (%s): %s", self.python, exc)
            self._start_soon(self._spawn)
            return
        worker = _Worker(process)
        self._all.add(worker)
        self._start_soon(self._drain_stderr, worker)
        try:
            with trio.fail_after(START_TIMEOUT_S):
                ready = await worker.read_frame(MAX_HEADER)
            if ready != READY:
                raise _WorkerGone(f"it said {ready[:80]!r} instead of being ready")
        except (_WorkerGone, trio.TooSlowError) as exc:
            self._failed_starts += 1
            log.error("a workflow-parse worker (pid %d) did not start: %s", worker.pid, exc)
            await self._retire(worker)
            return
        self._failed_starts = 0
        self._send.send_nowait(worker)

    async def _drain_stderr(self, worker: _Worker) -> None:
        """Keep the tail of what the worker writes to stderr (for one log line if it dies)."""
        stream = worker.process.stderr
        assert stream is not None
        while chunk := await stream.receive_some(_STDERR_CHUNK):
            worker.stderr_tail.append(chunk)  # (a bounded deque: the oldest chunks go)

    async def _retire(self, worker: _Worker) -> None:
        """Kill ``worker``, reap it and start another in its place."""
        worker.kill()
        with trio.move_on_after(5):
            await worker.process.wait()
        self._all.discard(worker)
        self._start_soon(self._spawn)

    def _start_soon(self, fn: Any, *args: Any) -> bool:
        """Start a task of the pool; False when the pool is stopping (or stopped)."""
        if self._nursery is None:
            return False
        try:
            self._nursery.start_soon(fn, *args)
        except RuntimeError:  # "Nursery is closed to new arrivals": serve() is ending
            return False
        return True

    # -- parsing -------------------------------------------------------------------------

    async def parse(self, text: str | bytes, source: str) -> WorkflowSpec:
        """Parse a workflow in a worker. Raises what :func:`workflows.dsl.parse_workflow`
        raises (a one-line :class:`~workflows.errors.WorkflowDefinitionError`), plus
        :class:`ParserBusyError` and :class:`ParseWorkerError`."""
        data = workflow_bytes(text, source=source, limits=self.limits)  # no worker needed
        spec_json = await self._parse_in_worker(data, source)
        # the spec was validated in the worker, within the bounds: building it again here
        # costs about a tenth of the parse (in a thread, off the loop)
        return await trio.to_thread.run_sync(WorkflowSpec.from_json, spec_json)

    async def _parse_in_worker(self, data: bytes, source: str) -> bytes:
        """The spec's JSON, from a worker."""
        worker = await self._acquire()
        header = json.dumps({"source": source, "limits": self.limits.model_dump()}).encode()
        reusable = False
        try:
            with trio.move_on_after(self.limits.timeout_s + GRACE_S) as bounded:
                await worker.send(frame(header) + frame(data))
                reply = json.loads(await worker.read_frame(MAX_HEADER))
                body = await worker.read_frame(self._reply_limit()) if reply.get("ok") else b""
            if bounded.cancelled_caught:
                raise WorkflowLimitError(
                    f"parsing took longer than {self.limits.timeout_s:g} s",
                    source,
                    bound="timeout_s",
                    limit=self.limits.timeout_s,
                )
            worker.served += 1
            if reply.get("ok"):
                reusable = True  # (given back before the spec is built, below)
                return body
            error = reply.get("error") or {}
            if error.get("type") == "memory":
                raise self._memory_error(source)
            problem = error_from_fields(error)
            reusable = True
            raise problem
        except _WorkerGone as exc:
            raise await self._died(worker, source, str(exc)) from None
        except (ValueError, AttributeError) as exc:  # a reply that is not what it should be
            raise ParseWorkerError(f"the workflow-parse worker sent a bad reply: {exc}") from None
        finally:
            if reusable:
                self._send.send_nowait(worker)
            elif not self._start_soon(self._retire, worker):
                # (also when the caller was cancelled: its reply would still come) and, when
                # the pool is stopping, killed here and reaped by serve()
                worker.kill()

    async def _acquire(self) -> _Worker:
        with trio.move_on_after(self.limits.timeout_s):
            while True:
                worker = await self._idle.receive()
                if worker.process.poll() is None:
                    return worker
                self._start_soon(self._retire, worker)  # died while idle
        raise ParserBusyError(
            f"all {self.workers} of the node's workflow-parse workers stayed busy for "
            f"{self.limits.timeout_s:g} s; try again in a moment"
        )

    def _reply_limit(self) -> int:
        # the spec's JSON: values with aliases expanded (each byte at most a 6-byte escape),
        # and the punctuation and keys of every node
        return 6 * self.limits.max_expanded_bytes + 64 * self.limits.max_nodes + (1 << 20)

    def _memory_error(self, source: str) -> WorkflowLimitError:
        return WorkflowLimitError(
            f"parsing needed more than {self.memory_mb} MiB",
            source,
            bound="worker_memory_mb",
            limit=self.memory_mb,
        )

    async def _died(self, worker: _Worker, source: str, why: str) -> Exception:
        """The error for a worker that stopped answering in the middle of a parse."""
        with trio.move_on_after(2):
            await worker.process.wait()
        status = worker.process.returncode
        tail = b"".join(worker.stderr_tail).decode("utf-8", "replace").strip().splitlines()
        log.warning(
            "workflow-parse worker (pid %d) stopped while parsing %r: %s (exit status %s)%s",
            worker.pid,
            source,
            why,
            status,
            f"; its last words: {tail[-1][:300]!r}" if tail else "",
        )
        if status == -signal.SIGXCPU:
            return WorkflowLimitError(
                f"parsing used more than {self.limits.timeout_s + 1:g} s of CPU",
                source,
                bound="timeout_s",
                limit=self.limits.timeout_s,
            )
        if status in (-signal.SIGABRT, EXIT_MEMORY):  # (an allocation refused in C aborts)
            return self._memory_error(source)
        return ParseWorkerError(
            f"the node's workflow-parse worker failed (exit status {status}) while parsing "
            f"{source}; the node's log has the details"
        )
