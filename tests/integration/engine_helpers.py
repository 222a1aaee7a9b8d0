"""Shared pieces of the workflow-engine tests: steps, bounded waits, subprocess drivers.

The steps live here (an importable module) so that Ray workers and the subprocess drivers
started by the tests load them by reference. Steps count their executions by appending a
line to a file (``O_APPEND``: one ``write`` per line, so concurrent writers never tear it).

A driver is this module run as a script::

    python -m tests.integration.engine_helpers MODE STORAGE RAY_ADDRESS ARG...

It connects to ``RAY_ADDRESS`` (the test session's Ray, or ``local`` for a private one),
opens ``STORAGE`` and runs one workflow; it prints JSON lines (``{"event": ...}``) flushed
at once, because the tests kill drivers with SIGKILL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import ray

import workflows as workflow
from workflows.events import EventListener
from workflows.status import WorkflowStatus

REPO_ROOT = Path(__file__).resolve().parents[2]
CHAIN_ID = "chain"
SLEEPER_ID = "sleeper"
VICTIM_ID = "victim"
REFS_ID = "refs"
FIB_ID = "fib"
SLEEP_S = 3.0
FIB_N = 7  # 41 fib steps and 20 add steps
FIB_BLOCK_AT = "r" + ".a" * 5  # the leftmost fib(2): deep in the recursion
REF_COUNT = 3
REF_BYTES = 100_000  # above Ray's inline limit: the values live in the object store


# -- bounded waiting ----------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout_s: float = 30.0, what: str = "it") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def in_thread(fn: Any, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
    """Call ``fn`` in a daemon thread; its outcome in a future. (A pool's thread would be
    joined at exit: a call that never returns would hang the test run instead of failing
    the test.)"""
    fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def go() -> None:
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)

    threading.Thread(target=go, daemon=True).start()
    return fut


def stays_false(predicate: Callable[[], Any], window_s: float) -> bool:
    """True if ``predicate`` stays falsy for the whole (short) observation window."""
    deadline = time.monotonic() + window_s
    while time.monotonic() < deadline:
        if predicate():
            return False
        time.sleep(0.02)
    return not predicate()


def process_running(proc: psutil.Process) -> bool:
    """``proc`` still runs (not gone, not another process with its pid, not a zombie)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- files as side-effect counters --------------------------------------------------------


def append_line(path: str | os.PathLike[str], text: str) -> None:
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{text}\n".encode())
    finally:
        os.close(fd)


def read_lines(path: str | os.PathLike[str]) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def count_lines(path: str | os.PathLike[str]) -> int:
    return len(read_lines(path))


def touch(path: str | os.PathLike[str]) -> None:
    Path(path).touch()


def write_atomically(path: str | os.PathLike[str], text: str) -> None:
    tmp = Path(f"{os.fspath(path)}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def index_counts(log: str | os.PathLike[str]) -> Counter[int]:
    return Counter(int(line) for line in read_lines(log))


# -- steps --------------------------------------------------------------------------------


@ray.remote
def add(a: int, b: int) -> int:
    return a + b


@ray.remote
def logged_step(prev: int, index: int, log: str) -> int:
    """One link of the durability chain: log the index (the side effect), return prev + 1."""
    append_line(log, str(index))
    return prev + 1


@ray.remote
def wait_for_file(
    path: str,
    value: Any,
    runs: str | None = None,
    timeout_s: float = 60.0,
) -> Any:
    """Return ``value`` once ``path`` exists; counts its runs in ``runs`` (if given)."""
    if runs is not None:
        append_line(runs, "run")
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.01)
    return value


@ray.remote
def counted(runs: str, value: Any) -> Any:
    append_line(runs, "run")
    return value


@ray.remote
def record(order: str, name: str) -> str:
    append_line(order, name)
    return name


@ray.remote
def identity(value: Any) -> Any:
    return value


@ray.remote
def fail_unless_flag(flag: str, runs: str, value: Any) -> Any:
    append_line(runs, "run")
    if not os.path.exists(flag):
        raise ValueError(f"flag {flag} is missing")
    return value


def current_task_id() -> str:
    """The workflow task id of the step running in this worker ("?" outside a workflow)."""
    from workflows.engine.step import current_step

    ctx = current_step()
    return ctx.task_id if ctx is not None else "?"


@ray.remote
def put_refs(n: int, runs: str) -> list[ray.ObjectRef]:
    """Returns ``n`` refs made with ``ray.put`` (owned by this worker)."""
    append_line(runs, "run")
    return [ray.put(bytes([i]) * REF_BYTES) for i in range(n)]


@ray.remote
def get_refs_after_file(refs: list[ray.ObjectRef], release: str, runs: str) -> list[list[int]]:
    """Waits for ``release``, then ``ray.get``s the refs: ``[[len, first byte], ...]``."""
    append_line(runs, "run")
    wait_until(lambda: os.path.exists(release), 60.0, f"release file {release}")
    return [[len(value), value[0]] for value in ray.get(refs)]


@ray.remote
def logged_add(a: int, b: int, log: str) -> int:
    append_line(log, f"add {current_task_id()}")
    return a + b


@ray.remote
def logged_fib(n: int, path: str, log: str, block_at: str, flag: str) -> Any:
    """fib by continuation; logs ``PATH TASK_ID`` per run (``path`` names the call in the
    recursion: ``r``, ``r.a``, ``r.b``, …); the call at ``block_at`` waits for ``flag``."""
    append_line(log, f"{path} {current_task_id()}")
    if path == block_at:
        wait_until(lambda: os.path.exists(flag), 60.0, f"flag file {flag}")
    if n <= 1:
        return n
    left: Any = logged_fib.bind(n - 1, f"{path}.a", log, block_at, flag)
    right: Any = logged_fib.bind(n - 2, f"{path}.b", log, block_at, flag)
    return workflow.continuation(logged_add.bind(left, right, log))


def fib_value(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


async def _file_event(path: str, timeout_s: float = 60.0) -> str:
    """The content of ``path`` once it exists (an event listener's poll)."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no event file {path}")
        await asyncio.sleep(0.01)
    return Path(path).read_text()


class FileEventListener(EventListener):
    """An event is a file appearing; the event is its content. Acknowledges to a file."""

    async def poll_for_event(self, path: str, ack: str) -> str:
        self._ack = ack
        return await _file_event(path)

    async def event_checkpointed(self, event: str) -> None:
        write_atomically(self._ack, event)


class CountingFileListener(EventListener):
    """Like FileEventListener, but counts: a line in ``polls`` per ``poll_for_event`` call,
    and one in ``ack`` per ``event_checkpointed`` call."""

    async def poll_for_event(self, path: str, ack: str, polls: str) -> str:
        self._ack = ack
        append_line(polls, "poll")
        return await _file_event(path)

    async def event_checkpointed(self, event: str) -> None:
        append_line(self._ack, event)


def event_then_file(event: str, ack: str, polls: str, release: str, runs: str) -> Any:
    """A ``wait_for_event`` whose event a step returns once ``release`` exists."""
    waiting = workflow.wait_for_event(CountingFileListener, event, ack, polls)
    return wait_for_file.bind(release, waiting, runs)


def logged_chain(steps: int, log: str) -> Any:
    """``steps`` chained steps with task ids ``s000``, ``s001``, …; the output is ``steps``."""
    node: Any = 0
    width = max(3, len(str(steps - 1)))
    for i in range(steps):
        options = workflow.options(task_id=f"s{i:0{width}d}")
        node = logged_step.options(**options).bind(node, i, log)
    return node


# -- a poisoned input ----------------------------------------------------------------------


def _restore_poison(trigger: str, stall: str) -> Poison:
    """Unpickling a :class:`Poison`: the process dies at once (SIGKILL, like the OOM killer
    or an operator's kill -9) while ``trigger`` exists, and hangs while ``stall`` exists."""
    if os.path.exists(trigger):
        os.kill(os.getpid(), signal.SIGKILL)
    deadline = time.monotonic() + 60.0
    while os.path.exists(stall) and time.monotonic() < deadline:
        time.sleep(0.01)
    return Poison(trigger, stall)


class Poison:
    """A workflow input that poisons its resume: a resume loads the stored inputs, and
    loading this one kills or stalls the process, as the files it names say. Pickled by
    reference to this module, so any process that loads it runs :func:`_restore_poison`."""

    def __init__(self, trigger: str, stall: str) -> None:
        self.trigger = trigger
        self.stall = stall

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_poison, (self.trigger, self.stall))


# -- subprocess drivers -------------------------------------------------------------------


def driver_env() -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


class Driver:
    """A driver subprocess; its stdout+stderr go to a file (no pipe to fill up)."""

    def __init__(self, mode: str, storage: Path, address: str, *args: str, out: Path) -> None:
        self.out = out
        self._file = open(out, "wb")  # noqa: SIM115 - closed in kill() or wait()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.engine_helpers",
                mode,
                str(storage),
                address,
                *args,
            ],
            cwd=REPO_ROOT,
            env=driver_env(),
            stdout=self._file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.out.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return found

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events() if e.get("event") == name), None)

    def wait_event(self, name: str, timeout_s: float = 60.0) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            found = self.event(name)
            if found is None and self.proc.poll() is not None:
                raise AssertionError(
                    f"driver exited ({self.proc.returncode}) before {name!r}:\n{self.tail()}"
                )
            return found

        return wait_until(seen, timeout_s, f"driver event {name!r}")

    def tail(self, chars: int = 4000) -> str:
        return self.out.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL the driver and reap it (an unreaped zombie would still look alive)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._file.close()

    def wait(self, timeout_s: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            self._file.close()


@contextlib.contextmanager
def blocked_driver(storage: Path, address: str, tmp: Path) -> Iterator[tuple[Driver, Path]]:
    """A driver running workflow VICTIM_ID, whose first step has started and waits for the
    file it yields (touch it to let the workflow finish). The driver is killed at exit."""
    release, runs = tmp / "release", tmp / "runs"
    driver = Driver("blocked", storage, address, str(release), str(runs), out=tmp / "drv.out")
    try:
        driver.wait_event("ready")
        wait_until(lambda: count_lines(runs) >= 1, what="the driver's step to start")
        yield driver, release
    finally:
        driver.kill()


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def _drive(mode: str, storage: str, address: str, args: list[str]) -> None:
    if address == "local":
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    workflow.init(storage=storage)
    _emit("ready", pid=os.getpid(), gcs=ray.get_runtime_context().gcs_address)
    if mode == "chain":
        (log,) = args
        result = workflow.run(logged_chain(200, log), workflow_id=CHAIN_ID)
    elif mode == "chain_or_resume":
        # run the logged chain ``wid`` of ``steps`` steps, or resume it if it exists
        wid, steps, log = args
        try:
            status = workflow.get_status(wid)
        except ValueError:
            status = None
        if status is None:
            result = workflow.run(logged_chain(int(steps), log), workflow_id=wid)
        elif status is WorkflowStatus.SUCCESSFUL:
            result = workflow.get_output(wid)
        else:
            result = workflow.resume(wid)
    elif mode == "sleep":
        dag = identity.bind(workflow.sleep(SLEEP_S))
        result = workflow.run(dag, workflow_id=SLEEPER_ID)
    elif mode == "blocked":
        release, runs = args
        dag = add.bind(wait_for_file.bind(release, 1, runs), 1)
        result = workflow.run(dag, workflow_id=VICTIM_ID)
    elif mode == "refs":
        release, put_runs, get_runs = args
        refs: Any = put_refs.options(**workflow.options(task_id="put")).bind(REF_COUNT, put_runs)
        dag = get_refs_after_file.bind(refs, release, get_runs)
        result = workflow.run(dag, workflow_id=REFS_ID)
    elif mode == "fib":
        log, flag = args
        result = workflow.run(
            logged_fib.bind(FIB_N, "r", log, FIB_BLOCK_AT, flag), workflow_id=FIB_ID
        )
    elif mode == "event":
        wid, event, ack, polls, release, runs = args
        result = workflow.run(event_then_file(event, ack, polls, release, runs), workflow_id=wid)
    elif mode == "poisoned":
        # the poison is an input that no step reads: only a resume loads it
        wid, trigger, stall, release, runs = args
        dag = wait_for_file.bind(release, 1, runs)
        result = workflow.run(dag, Poison(trigger, stall), workflow_id=wid)
    elif mode == "ray_restart":
        # ray.shutdown() under a running workflow, then a new ray.init() (issue 11)
        release, runs, go_on = args
        dag = add.bind(wait_for_file.bind(release, 1, runs), 1)
        workflow.run_async(dag, workflow_id=VICTIM_ID)
        wait_until(lambda: count_lines(runs) >= 1, 60.0, "the step to start")
        ray.shutdown()
        _emit("ray_down", initialized=workflow.is_initialized())
        wait_until(lambda: os.path.exists(go_on), 60.0, f"file {go_on}")
        ray.init(address=address, log_to_driver=False)
        _emit("ray_up", statuses={w: s.value for w, s in workflow.list_all()})
        Path(release).touch()
        pairs = workflow.resume_all()
        _emit("resumed", ids=[wid for wid, _ in pairs])
        result = {wid: ray.get(ref, timeout=60) for wid, ref in pairs}
        result["get_output_async"] = ray.get(workflow.get_output_async(VICTIM_ID), timeout=60)
    elif mode == "resume_all":
        (go,) = args  # a barrier: several drivers call resume_all() at the same moment
        wait_until(lambda: os.path.exists(go), 60.0, f"barrier file {go}")
        pairs = workflow.resume_all()
        _emit("resumed", ids=[wid for wid, _ in pairs])
        result = {wid: ray.get(ref) for wid, ref in pairs}
    elif mode == "small":
        (wid,) = args
        result = workflow.run(add.bind(add.bind(1, 2), 39), workflow_id=wid)
        _emit("status", status=workflow.get_status(wid).value)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    _emit("done", result=result)
    workflow.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    # import the module under its real name, so Ray pickles its steps by reference
    from tests.integration.engine_helpers import _drive as drive

    drive(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
