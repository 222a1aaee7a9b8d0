"""The durable journal: SQLite in WAL mode.

Holds workflows, their steps (status, attempts, outputs, where each ran and why) and
handoffs in both directions. A step's outputs are committed before any step that depends
on them starts, so a restarted node never reruns a finished step.

All methods are synchronous and thread-safe; one connection, serialised by a lock, is the
single writer. Async callers run them in a worker thread (see ``node.bridge``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workflows.errors import WorkflowError
from workflows.status import StepStatus, WorkflowStatus

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workflows (
    workflow_id TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    inputs      TEXT NOT NULL,
    status      TEXT NOT NULL,
    outputs     TEXT,
    error       TEXT,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    ended_at    REAL
);
CREATE INDEX IF NOT EXISTS workflows_status ON workflows(status);
CREATE TABLE IF NOT EXISTS steps (
    workflow_id TEXT NOT NULL REFERENCES workflows(workflow_id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    position    INTEGER NOT NULL,
    tool        TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    node        TEXT,
    reason      TEXT,
    outputs     TEXT,
    error       TEXT,
    started_at  REAL,
    ended_at    REAL,
    PRIMARY KEY (workflow_id, name)
);
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


class JournalError(WorkflowError):
    """The journal could not be opened or written."""


@dataclass(frozen=True)
class WorkflowRecord:
    workflow_id: str
    name: str
    kind: str
    spec: str
    inputs: dict[str, Any]
    status: WorkflowStatus
    outputs: dict[str, Any] | None
    error: str | None
    created_at: float
    updated_at: float
    ended_at: float | None


@dataclass(frozen=True)
class StepRecord:
    workflow_id: str
    name: str
    position: int
    tool: str
    status: StepStatus
    attempts: int
    node: str | None
    reason: str | None
    outputs: dict[str, Any] | None
    error: str | None
    started_at: float | None
    ended_at: float | None


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


class Journal:
    """SQLite journal. ``synchronous="FULL"`` (default) survives power loss after commit;
    ``"NORMAL"`` is faster and survives process crashes."""

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

    # -- workflows -----------------------------------------------------------------------

    def create_workflow(
        self,
        workflow_id: str,
        *,
        name: str,
        kind: str,
        spec: str,
        inputs: dict[str, Any],
        steps: list[tuple[str, str]],
        status: WorkflowStatus = WorkflowStatus.RUNNING,
    ) -> bool:
        """Record a new workflow and its steps (name, tool) atomically.

        Returns False, changing nothing, if the id already exists (idempotent submit).
        """
        now = self._clock()
        with self._tx() as db:
            exists = db.execute(
                "SELECT 1 FROM workflows WHERE workflow_id = ?", (workflow_id,)
            ).fetchone()
            if exists:
                return False
            db.execute(
                "INSERT INTO workflows(workflow_id, name, kind, spec, inputs, status,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (workflow_id, name, kind, spec, _dumps(inputs), status.value, now, now),
            )
            db.executemany(
                "INSERT INTO steps(workflow_id, name, position, tool, status)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (workflow_id, step, i, tool, StepStatus.PENDING.value)
                    for i, (step, tool) in enumerate(steps)
                ],
            )
        return True

    def get_workflow(self, workflow_id: str) -> WorkflowRecord | None:
        rows = self._query("SELECT * FROM workflows WHERE workflow_id = ?", (workflow_id,))
        return _workflow(rows[0]) if rows else None

    def list_workflows(self, statuses: set[WorkflowStatus] | None = None) -> list[WorkflowRecord]:
        rows = self._query("SELECT * FROM workflows ORDER BY created_at, workflow_id")
        records = [_workflow(r) for r in rows]
        if statuses is not None:
            records = [r for r in records if r.status in statuses]
        return records

    def set_workflow_status(
        self,
        workflow_id: str,
        status: WorkflowStatus,
        *,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        now = self._clock()
        ended = now if status.is_terminal() else None
        with self._tx() as db:
            db.execute(
                "UPDATE workflows SET status = ?, outputs = ?, error = ?, updated_at = ?,"
                " ended_at = ? WHERE workflow_id = ?",
                (
                    status.value,
                    None if outputs is None else _dumps(outputs),
                    error,
                    now,
                    ended,
                    workflow_id,
                ),
            )
            if status in (WorkflowStatus.FAILED, WorkflowStatus.CANCELED):
                db.execute(
                    "UPDATE steps SET status = ? WHERE workflow_id = ? AND status = ?",
                    (StepStatus.SKIPPED.value, workflow_id, StepStatus.PENDING.value),
                )
                db.execute(
                    "UPDATE steps SET status = ?, ended_at = ? WHERE workflow_id = ?"
                    " AND status = ?",
                    (StepStatus.CANCELED.value, now, workflow_id, StepStatus.RUNNING.value),
                )

    # -- steps ---------------------------------------------------------------------------

    def list_steps(self, workflow_id: str) -> list[StepRecord]:
        rows = self._query(
            "SELECT * FROM steps WHERE workflow_id = ? ORDER BY position", (workflow_id,)
        )
        return [_step(r) for r in rows]

    def step_started(self, workflow_id: str, step: str, *, node: str, reason: str) -> int:
        """Mark a step running on ``node``; returns the attempt number (1-based)."""
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "UPDATE steps SET status = ?, attempts = attempts + 1, node = ?, reason = ?,"
                " started_at = ?, ended_at = NULL, error = NULL"
                " WHERE workflow_id = ? AND name = ?",
                (StepStatus.RUNNING.value, node, reason, now, workflow_id, step),
            )
            row = db.execute(
                "SELECT attempts FROM steps WHERE workflow_id = ? AND name = ?",
                (workflow_id, step),
            ).fetchone()
        if row is None:
            raise JournalError(f"workflow {workflow_id!r} has no step {step!r}")
        return int(row[0])

    def step_placed(self, workflow_id: str, step: str, *, node: str, reason: str) -> None:
        """Update where a running step is (e.g. after a retry on another peer)."""
        with self._tx() as db:
            db.execute(
                "UPDATE steps SET node = ?, reason = ? WHERE workflow_id = ? AND name = ?",
                (node, reason, workflow_id, step),
            )

    def commit_step_result(
        self, workflow_id: str, step: str, outputs: dict[str, Any], *, node: str, reason: str
    ) -> None:
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "UPDATE steps SET status = ?, outputs = ?, node = ?, reason = ?, ended_at = ?,"
                " error = NULL WHERE workflow_id = ? AND name = ?",
                (
                    StepStatus.SUCCESSFUL.value,
                    _dumps(outputs),
                    node,
                    reason,
                    now,
                    workflow_id,
                    step,
                ),
            )

    def commit_step_failure(
        self, workflow_id: str, step: str, error: str, *, node: str | None, reason: str | None
    ) -> None:
        now = self._clock()
        with self._tx() as db:
            db.execute(
                "UPDATE steps SET status = ?, error = ?, node = COALESCE(?, node),"
                " reason = COALESCE(?, reason), ended_at = ? WHERE workflow_id = ? AND name = ?",
                (StepStatus.FAILED.value, error, node, reason, now, workflow_id, step),
            )

    def reset_running_steps(self, workflow_id: str) -> None:
        """After a crash: steps that were running have no committed result; run them again."""
        with self._tx() as db:
            db.execute(
                "UPDATE steps SET status = ? WHERE workflow_id = ? AND status = ?",
                (StepStatus.PENDING.value, workflow_id, StepStatus.RUNNING.value),
            )

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


def _workflow(r: sqlite3.Row) -> WorkflowRecord:
    return WorkflowRecord(
        workflow_id=r["workflow_id"],
        name=r["name"],
        kind=r["kind"],
        spec=r["spec"],
        inputs=_loads(r["inputs"]),
        status=WorkflowStatus(r["status"]),
        outputs=_loads(r["outputs"]),
        error=r["error"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        ended_at=r["ended_at"],
    )


def _step(r: sqlite3.Row) -> StepRecord:
    return StepRecord(
        workflow_id=r["workflow_id"],
        name=r["name"],
        position=r["position"],
        tool=r["tool"],
        status=StepStatus(r["status"]),
        attempts=r["attempts"],
        node=r["node"],
        reason=r["reason"],
        outputs=_loads(r["outputs"]),
        error=r["error"],
        started_at=r["started_at"],
        ended_at=r["ended_at"],
    )
