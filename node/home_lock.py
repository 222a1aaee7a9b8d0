"""One node per home: an exclusive OS lock on ``HOME/node.lock`` while a node runs.

The lock is an ``flock`` on an open file, so the kernel releases it when the process ends,
however it ends (``kill -9`` included): whether a node runs from a home is a question for
the lock, never for a recorded pid (a pid outlives nothing and may be reused by any other
process). The lock file holds the pid of the node that last took it, for messages only.

Who takes it how:

* a starting node takes it exclusively and holds it until it exits
  (:meth:`HomeLock.acquire`);
* the CLI asks whether a node holds it (:func:`lock_holder`) by taking it *shared* for an
  instant. A starting node that meets only such shared holders waits for them (a few
  milliseconds at most) rather than reporting a running node; one that meets an exclusive
  holder fails at once.

The lock file's descriptor is not inherited by child processes (Python opens files
close-on-exec), so the Ray processes a node starts never keep its home locked.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from node.errors import HomeError, HomeLockedError

LOCK_FILE = "node.lock"

# How long a starting node waits for shared holders (CLI probes, each holding the lock for
# microseconds) to let go before it gives up. A node holding the lock is never waited for.
PROBE_GRACE_S = 0.5
_PROBE_RETRY_S = 0.002


def lock_path(home: Path) -> Path:
    return home / LOCK_FILE


def start_hint(home: Path) -> str:
    return f"hivemesh node start --home {home}"


class HomeLock:
    """The exclusive lock of one home, for the lifetime of the node that holds it.

    ``acquire`` raises :class:`HomeLockedError` (one line naming the home and the pid that
    holds it) if a node runs from the home, or :class:`HomeError` if the lock file cannot
    be created or opened. ``release`` (or the end of the process) lets it go."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = lock_path(home)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already locked by this HomeLock")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise HomeError(
                f"cannot open the lock file {self.path}: {_reason(exc)}: check the permissions "
                f"of {self.home} or use another --home"
            ) from None
        try:
            self._lock_exclusively(fd)
            _record_pid(fd, os.getpid())
        except BaseException:
            os.close(fd)  # also lets go of the lock, if it was taken
            raise
        self._fd = fd

    def _lock_exclusively(self, fd: int) -> None:
        deadline = time.monotonic() + PROBE_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            # Held by a node (exclusively, for as long as it runs) or by CLI probes (shared,
            # for an instant). A shared request tells the two apart: it fails only against
            # an exclusive holder.
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self._locked(fd) from None
            fcntl.flock(fd, fcntl.LOCK_UN)
            if time.monotonic() >= deadline:
                raise self._locked(fd)
            time.sleep(_PROBE_RETRY_S)

    def _locked(self, fd: int) -> HomeLockedError:
        pid = _read_pid(fd)
        who = f"pid {pid}" if pid is not None else "pid unknown"
        return HomeLockedError(
            f"a node is already running from {self.home} ({who} holds {self.path}): "
            "stop it first, or start this node with another --home",
            pid,
        )

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> HomeLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_holder(home: Path) -> int | None:
    """Whether a node runs from ``home``: None if none holds its lock; else the pid the
    node recorded in the lock file (0 if unreadable). Creates nothing and never blocks."""
    try:
        fd = os.open(lock_path(home), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # no node ever ran from this home with a lock
    except OSError as exc:
        raise HomeError(f"cannot open the lock file {lock_path(home)}: {_reason(exc)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _record_pid(fd: int, pid: int) -> None:
    data = f"{pid}\n".encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()
