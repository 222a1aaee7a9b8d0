"""The node's handoff journal: every step delegated to or by this node (SQLite, WAL).

The delegatee records what it accepted and its outcome, so a delegator that lost the
stream (or restarted) and offers the same handoff id again gets the stored result instead
of a second run. Workflows and their steps are in the engine's journal (``workflows.db``).

All methods are synchronous and thread-safe (one connection, serialised by a lock);
:class:`AsyncHandoffJournal` runs them from trio in one worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio

from node.errors import NodeError

SCHEMA_VERSION = 1
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS handoffs (
    handoff_id  TEXT PRIMARY KEY,
    direction   TEXT NOT NULL,
    peer        TEXT NOT NULL,
    workflow_id TEXT,
    step        TEXT,
    tool        TEXT NOT NULL,
    status      TEXT NOT NULL,
    outputs     TEXT,
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);
"""


class JournalError(NodeError):
    """The handoff journal could not be opened or written."""


@dataclass(frozen=True)
class HandoffRecord:
    handoff_id: str
    direction: Literal["in", "out"]
    peer: str
    workflow_id: str | None
    step: str | None
    tool: str
    status: str
    outputs: dict[str, Any] | None
    error: str | None
    created_at: float
    updated_at: float


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class HandoffJournal:
    """``synchronous="FULL"`` (default) survives power loss after commit; ``"NORMAL"`` is
    faster and survives process crashes."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        self._closed = False

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise JournalError("journal is closed")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            if self._closed:
                raise JournalError("journal is closed")
            cur = self._db.execute(sql, args)
            cur.row_factory = sqlite3.Row
            return list(cur.fetchall())

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()

    # -- handoffs ------------------------------------------------------------------------

    def record_handoff(
        self,
        handoff_id: str,
        *,
        direction: Literal["in", "out"],
        peer: str,
        tool: str,
        workflow_id: str | None,
        step: str | None,
        status: str,
    ) -> None:
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "INSERT INTO handoffs(handoff_id, direction, peer, workflow_id, step, tool,"
                " status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(handoff_id) DO UPDATE SET status = excluded.status,"
                " updated_at = excluded.updated_at",
                (handoff_id, direction, peer, workflow_id, step, tool, status, now, now),
            )

    def finish_handoff(
        self,
        handoff_id: str,
        status: str,
        *,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE handoffs SET status = ?, outputs = ?, error = ?, updated_at = ?"
                " WHERE handoff_id = ?",
                (
                    status,
                    None if outputs is None else _dumps(outputs),
                    error,
                    self._clock(),
                    handoff_id,
                ),
            )

    def get_handoff(self, handoff_id: str) -> HandoffRecord | None:
        rows = self._query("SELECT * FROM handoffs WHERE handoff_id = ?", (handoff_id,))
        if not rows:
            return None
        r = rows[0]
        return HandoffRecord(
            handoff_id=r["handoff_id"],
            direction=r["direction"],
            peer=r["peer"],
            workflow_id=r["workflow_id"],
            step=r["step"],
            tool=r["tool"],
            status=r["status"],
            outputs=_loads(r["outputs"]),
            error=r["error"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )


class AsyncHandoffJournal:
    """The handoff journal from trio: every call runs in one worker thread."""

    def __init__(self, journal: HandoffJournal) -> None:
        self.sync = journal
        self._limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._limiter)
