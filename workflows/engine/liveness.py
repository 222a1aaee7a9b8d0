"""Who owns a workflow: an owner is ``host/pid/process start time``. On the owner's host
it is alive while that process runs (a reused pid is another process; an exited but
unreaped one is dead); elsewhere, while its heartbeat in the journal is fresh."""

from __future__ import annotations

import os
import socket
import time

import psutil
import ray


def this_process_owner() -> str:
    """Identifies this process: host, pid and start time (so pid reuse is detected)."""
    return f"{socket.gethostname()}/{os.getpid()}/{_process_start(os.getpid())}"


def _process_start(pid: int) -> str:
    """When process ``pid`` started (psutil: any OS), or "?" if there is no such process."""
    try:
        return f"{psutil.Process(pid).create_time():.3f}"
    except (psutil.Error, OSError):
        return "?"


def _process_running(pid: int, started: str) -> bool:
    """Process ``pid`` exists, is the one that started at ``started`` (a reused pid is
    another process), and has not exited (a zombie that its parent did not reap yet)."""
    try:
        proc = psutil.Process(pid)
        return f"{proc.create_time():.3f}" == started and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError):
        return False


def owner_alive(
    owner: str | None,
    heartbeat: float | None,
    *,
    stale_after_s: float = 15.0,
    now: float | None = None,
) -> bool:
    if not owner:
        return False
    host, _, rest = owner.partition("/")
    pid_text, _, started = rest.partition("/")
    if host == socket.gethostname():
        try:
            pid = int(pid_text)
        except ValueError:
            return False
        return _process_running(pid, started)
    now = time.time() if now is None else now
    return heartbeat is not None and now - heartbeat < stale_after_s


def ray_session() -> tuple[str, str] | None:
    """The Ray this process is connected to, as (node id, job id); None while Ray is not
    initialised. After ``ray.shutdown()``, a new ``ray.init()`` is another session: a new
    job id (and on a new local cluster, a new node id)."""
    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    return (context.get_node_id(), context.get_job_id())
