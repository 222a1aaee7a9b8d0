"""Who owns a workflow: liveness of the owner recorded in the journal (no Ray needed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from workflows.engine.liveness import owner_alive, this_process_owner


def _owner_of(pid: int) -> str:
    import psutil

    return f"{socket.gethostname()}/{pid}/{psutil.Process(pid).create_time():.3f}"


def test_this_process_is_alive() -> None:
    owner = this_process_owner()
    assert owner == _owner_of(os.getpid())
    assert owner_alive(owner, heartbeat=None)


def test_an_exited_and_reaped_process_is_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    owner = _owner_of(child.pid)
    assert owner_alive(owner, heartbeat=None)
    child.kill()
    child.wait(timeout=10)
    assert not owner_alive(owner, heartbeat=time.time())


def test_a_killed_but_unreaped_child_is_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    owner = _owner_of(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    try:
        deadline = time.monotonic() + 10
        while owner_alive(owner, heartbeat=None) and time.monotonic() < deadline:
            time.sleep(0.01)  # a zombie now: its pid exists until we reap it
        assert os.path.exists(f"/proc/{child.pid}") or sys.platform != "linux"
        assert not owner_alive(owner, heartbeat=None)
    finally:
        child.wait(timeout=10)


def test_a_reused_pid_is_not_the_owner() -> None:
    host, pid, started = this_process_owner().split("/")
    earlier = f"{float(started) - 1000:.3f}"
    assert not owner_alive(f"{host}/{pid}/{earlier}", heartbeat=time.time())


def test_a_malformed_owner_is_dead() -> None:
    host = socket.gethostname()
    assert not owner_alive(f"{host}/not-a-pid/0", heartbeat=time.time())
    assert not owner_alive("", heartbeat=time.time())
    assert not owner_alive(None, heartbeat=time.time())


def test_an_owner_on_another_host_lives_while_its_heartbeat_is_fresh() -> None:
    owner = "some-other-host.example/1234/1.000"
    now = 1_000_000.0
    assert owner_alive(owner, heartbeat=now - 5, now=now)
    assert not owner_alive(owner, heartbeat=now - 60, now=now)
    assert not owner_alive(owner, heartbeat=None, now=now)
