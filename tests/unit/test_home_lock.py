"""One node per home: the home's lock, the stale ``node.json``, the writability checks.

Processes here are plain Python (no Ray): a lock held by another process, released by the
OS when that process is killed, and never inherited by the processes it started."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.client import resolve_node_addr
from node.errors import HomeError, HomeLockedError, NodeUnreachableError
from node.home import Home
from node.home_lock import PROBE_GRACE_S, HomeLock, lock_holder, lock_path

# A process that takes the home's lock, optionally starts a child that outlives it (as
# Ray's processes outlive a node killed alone), says so, and waits to be killed.
HOLDER = """
import subprocess, sys, time
from pathlib import Path
from node.home_lock import HomeLock
lock = HomeLock(Path(sys.argv[1]))
lock.acquire()
child = None
if sys.argv[2] == "child":
    # close_fds=False: the child gets every inheritable descriptor; the lock's is not one
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                             close_fds=False)
print(child.pid if child else 0, flush=True)
sys.stdin.read()
"""


class Holder:
    def __init__(self, home: Path, *, child: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(home), "child" if child else "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the lock is held once this line is out
        assert line, "the lock holder exited before taking the lock"
        self.child_pid = int(line)

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no clean-up of any kind in the holder
        self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        if self.child_pid:
            try:
                os.kill(self.child_pid, signal.SIGKILL)
                os.waitpid(self.child_pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(tmp_path / "home")
    h.path.mkdir()
    return h


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.close()


def test_a_second_lock_on_one_home_fails_naming_the_home_and_the_pid(home: Home) -> None:
    with HomeLock(home.path):
        assert lock_holder(home.path) == os.getpid()
        with pytest.raises(HomeLockedError) as err:
            HomeLock(home.path).acquire()
    assert err.value.pid == os.getpid()
    message = str(err.value)
    assert str(home.path) in message and f"pid {os.getpid()}" in message
    assert "\n" not in message
    # released: free for the next node
    assert lock_holder(home.path) is None
    with HomeLock(home.path):
        pass


def test_lock_holder_creates_nothing_and_answers_none_without_a_lock_file(tmp_path: Path) -> None:
    missing = tmp_path / "never-started"
    assert lock_holder(missing) is None
    assert not missing.exists()


def test_a_lock_held_by_another_process_is_freed_by_kill_9(
    home: Home, holders: list[Holder]
) -> None:
    holder = Holder(home.path)
    holders.append(holder)
    assert lock_holder(home.path) == holder.proc.pid
    with pytest.raises(HomeLockedError, match=f"pid {holder.proc.pid}"):
        HomeLock(home.path).acquire()
    holder.kill()
    assert lock_holder(home.path) is None
    with HomeLock(home.path):
        assert lock_holder(home.path) == os.getpid()


def test_processes_a_node_started_do_not_keep_its_home_locked(
    home: Home, holders: list[Holder]
) -> None:
    holder = Holder(home.path, child=True)
    holders.append(holder)
    holder.kill()
    os.kill(holder.child_pid, 0)  # the child (think: a Ray process) is still alive
    assert lock_holder(home.path) is None


def test_a_shared_probe_that_never_ends_delays_a_start_only_boundedly(home: Home) -> None:
    # CLI probes hold the lock shared for an instant; a starting node waits them out
    # (PROBE_GRACE_S at most) instead of reporting a running node at once
    fd = os.open(lock_path(home.path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with pytest.raises(HomeLockedError, match="already running"):
            HomeLock(home.path).acquire()
    finally:
        os.close(fd)
    assert PROBE_GRACE_S <= 1.0
    with HomeLock(home.path):
        pass


def _write_runtime(home: Home, pid: int) -> None:
    home.runtime_file.write_text(
        json.dumps({"pid": pid, "addrs": ["/ip4/127.0.0.1/tcp/9/p2p/12D3KooWGone"]})
    )


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


@pytest.mark.parametrize("who", ["dead pid", "pid of another live process"])
def test_a_stale_node_json_is_found_by_the_lock_and_removed(home: Home, who: str) -> None:
    pid = _dead_pid() if who == "dead pid" else os.getpid()
    _write_runtime(home, pid)
    # the CLI: no node runs from the home, whatever pid node.json names
    with pytest.raises(NodeUnreachableError) as err:
        resolve_node_addr(home, None)
    assert str(err.value) == (
        f"no node running from {home.path} "
        f"(start one with 'hivemesh node start --home {home.path}', or pass --node)"
    )
    # a starting node: takes the home and removes the stale file
    with home.claim_for_node() as claim:
        assert claim.stale_runtime is not None and claim.stale_runtime["pid"] == pid
        assert not home.runtime_file.exists()
        assert lock_holder(home.path) == os.getpid()


def test_an_unreadable_node_json_is_stale_too(home: Home) -> None:
    home.runtime_file.write_text("{not json")
    with home.claim_for_node() as claim:
        assert claim.stale_runtime == {}
    assert not home.runtime_file.exists()


def test_the_cli_sees_a_starting_node_by_its_lock(home: Home) -> None:
    with home.claim_for_node():  # locked, node.json not written yet
        with pytest.raises(NodeUnreachableError, match="still starting"):
            resolve_node_addr(home, None)
        _write_runtime(home, os.getpid())
        assert resolve_node_addr(home, None).startswith("/ip4/127.0.0.1/tcp/9/")


def test_a_refused_claim_leaves_the_running_nodes_files_alone(home: Home) -> None:
    with home.claim_for_node():
        _write_runtime(home, os.getpid())  # as the running node does once ready
        with pytest.raises(HomeLockedError):
            home.claim_for_node()
        assert json.loads(home.runtime_file.read_text())["pid"] == os.getpid()
        assert lock_holder(home.path) == os.getpid()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda h: (h.path / "journal.db").mkdir(), "journal.db is a folder"),
        (lambda h: (h.path / "workflows.db").mkdir(), "workflows.db is a folder"),
        (lambda h: (h.path / "journal.db-wal").mkdir(), "journal.db-wal is a folder"),
        (lambda h: (h.path / "objects").write_text(""), "objects is not a folder"),
    ],
)
def test_journal_files_that_cannot_be_opened_fail_the_claim_in_one_line(
    home: Home, make: object, expected: str
) -> None:
    make(home)  # type: ignore[operator]
    with pytest.raises(HomeError) as err:
        home.claim_for_node()
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert lock_holder(home.path) is None  # a refused claim does not keep the lock


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_an_unwritable_home_fails_the_claim_in_one_line(home: Home) -> None:
    os.chmod(home.path, 0o500)
    try:
        with pytest.raises(HomeError) as err:
            home.claim_for_node()
    finally:
        os.chmod(home.path, 0o700)
    assert str(err.value).startswith(f"home {home.path} is not writable (permission denied)")
