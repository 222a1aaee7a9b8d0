"""The node's handoff journal: every step delegated to or by this node (SQLite, WAL).

A handoff is keyed by (direction, peer, handoff id): the delegatee records what each peer
offered it (``in``) and its outcome, so the same peer re-offering the same id gets the stored
outcome instead of a second run, and no other peer ever sees it; the delegator records what it
offered (``out``), with the result and the signed receipt it verified. Workflows and their
steps are in the engine's journal (``workflows.db``).

Stored results are kept until the delegator acknowledges them or ``retention_s`` passes, then
pruned (:meth:`HandoffJournal.prune`); the bytes a peer may keep stored here are bounded.

All methods are synchronous and thread-safe (one connection, serialised by a lock);
:class:`AsyncHandoffJournal` runs them from trio in one worker thread. The exception is
:meth:`HandoffJournal.peek`, a primary-key lookup on a connection of its own that never waits
for the writer (WAL readers see the last commit), cheap enough for the event loop: a handoff's
path asks it instead of a round trip to the worker thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import trio

from node.errors import NodeError

SCHEMA_VERSION = 2
# the largest stored outcome :meth:`HandoffJournal.peek` decodes (on the event loop)
PEEK_MAX_BYTES = 64 * 1024
T = TypeVar("T")
Direction = Literal["in", "out"]

_TABLE = """
CREATE TABLE IF NOT EXISTS handoffs (
    direction   TEXT NOT NULL,
    peer        TEXT NOT NULL,
    handoff_id  TEXT NOT NULL,
    epoch       INTEGER NOT NULL DEFAULT 0,
    workflow_id TEXT,
    step        TEXT,
    tool        TEXT NOT NULL,
    status      TEXT NOT NULL,
    outputs     TEXT,
    error       TEXT,
    code        TEXT,
    receipt     TEXT,
    size        INTEGER NOT NULL DEFAULT 0,
    acked_at    REAL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (direction, peer, handoff_id)
);
CREATE INDEX IF NOT EXISTS handoffs_by_age ON handoffs(updated_at);
CREATE INDEX IF NOT EXISTS handoffs_by_step ON handoffs(workflow_id, step);
"""

# The bytes of outcomes stored per peer and direction, kept by triggers in the same
# transaction as every change of ``handoffs.size``: a handoff's commit reads its peer's total
# with a key lookup. (Summing the peer's rows instead cost every handoff a scan of all the
# peer's handoffs of the last ``retention_s``, a cost that grew with the traffic.) The
# triggers live in the file, so every writer keeps the totals, an older hivemesh included.
_TOTALS = (
    """CREATE TABLE IF NOT EXISTS handoff_bytes (
    direction TEXT NOT NULL,
    peer      TEXT NOT NULL,
    bytes     INTEGER NOT NULL,
    PRIMARY KEY (direction, peer)
) WITHOUT ROWID""",
    """CREATE TRIGGER IF NOT EXISTS handoff_bytes_insert AFTER INSERT ON handoffs
WHEN new.size != 0 BEGIN
    INSERT INTO handoff_bytes(direction, peer, bytes) VALUES (new.direction, new.peer, new.size)
    ON CONFLICT(direction, peer) DO UPDATE SET bytes = bytes + excluded.bytes;
END""",
    """CREATE TRIGGER IF NOT EXISTS handoff_bytes_update AFTER UPDATE OF size ON handoffs
WHEN new.size != old.size BEGIN
    INSERT INTO handoff_bytes(direction, peer, bytes)
    VALUES (new.direction, new.peer, new.size - old.size)
    ON CONFLICT(direction, peer) DO UPDATE SET bytes = bytes + excluded.bytes;
END""",
    """CREATE TRIGGER IF NOT EXISTS handoff_bytes_delete AFTER DELETE ON handoffs
WHEN old.size != 0 BEGIN
    UPDATE handoff_bytes SET bytes = bytes - old.size
    WHERE direction = old.direction AND peer = old.peer;
END""",
)


_ACK_SQL = (
    "UPDATE handoffs SET outputs = NULL, size = length(coalesce(error, '')),"
    " acked_at = ? WHERE direction = 'in' AND peer = ? AND handoff_id = ?"
    " AND epoch = ? AND acked_at IS NULL AND status IN ('SUCCESSFUL', 'FAILED')"
)


class JournalError(NodeError):
    """The handoff journal could not be opened or written."""


@dataclass(frozen=True)
class HandoffRecord:
    handoff_id: str
    direction: Direction
    peer: str
    epoch: int
    workflow_id: str | None
    step: str | None
    tool: str
    status: str
    outputs: dict[str, Any] | None
    error: str | None
    code: str | None
    receipt: dict[str, Any] | None
    size: int
    acked_at: float | None
    created_at: float
    updated_at: float


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _record(r: sqlite3.Row) -> HandoffRecord:
    return HandoffRecord(
        handoff_id=r["handoff_id"],
        direction=r["direction"],
        peer=r["peer"],
        epoch=r["epoch"],
        workflow_id=r["workflow_id"],
        step=r["step"],
        tool=r["tool"],
        status=r["status"],
        outputs=_loads(r["outputs"]),
        error=r["error"],
        code=r["code"],
        receipt=_loads(r["receipt"]),
        size=r["size"],
        acked_at=r["acked_at"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


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
            # before any table exists: pruned pages can be given back to the file system
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            # the WAL file is truncated back to this size after each checkpoint
            self._db.execute("PRAGMA journal_size_limit=4194304")
            self._migrate()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        self._closed = False
        self._reader: sqlite3.Connection | None = None  # peek's own (opened on first use)
        self._reader_lock = threading.Lock()

    def _migrate(self) -> None:
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row[0]) if row else None
        if version is not None and version > SCHEMA_VERSION:
            raise JournalError(
                f"journal {self.path} has schema {version}, newer than this hivemesh "
                f"({SCHEMA_VERSION}): upgrade hivemesh"
            )
        if version == 1:
            # v1 keyed handoffs by id alone (any peer could reach another's handoff)
            db.execute("BEGIN IMMEDIATE")
            db.execute("ALTER TABLE handoffs RENAME TO handoffs_v1")
            for statement in _TABLE.split(";"):  # executescript would commit first
                if statement.strip():
                    db.execute(statement)
            db.execute(
                "INSERT INTO handoffs(direction, peer, handoff_id, workflow_id, step, tool,"
                " status, outputs, error, size, created_at, updated_at)"
                " SELECT direction, peer, handoff_id, workflow_id, step, tool, status, outputs,"
                " error, length(coalesce(outputs, '')) + length(coalesce(error, '')),"
                " created_at, updated_at FROM handoffs_v1"
            )
            db.execute("DROP TABLE handoffs_v1")
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
            db.execute("COMMIT")
            db.execute("VACUUM")  # turns incremental auto-vacuum on for an old file
            self._add_totals()
            return
        db.executescript(_TABLE)
        db.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )
        self._add_totals()

    def _add_totals(self) -> None:
        """The per-peer totals and their triggers, counted once from the rows of a journal
        written before they existed (in one transaction: no write is missed or counted
        twice)."""
        db = self._db
        known = db.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE"
            " 'handoff_bytes_%'"
        ).fetchone()[0]
        if known == 3:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _TOTALS:
                db.execute(statement)
            db.execute("DELETE FROM handoff_bytes")
            db.execute(
                "INSERT INTO handoff_bytes(direction, peer, bytes) SELECT direction, peer,"
                " sum(size) FROM handoffs GROUP BY direction, peer HAVING sum(size) != 0"
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

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
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    # -- handoffs ------------------------------------------------------------------------

    def record_handoff(
        self,
        handoff_id: str,
        *,
        direction: Direction,
        peer: str,
        tool: str,
        workflow_id: str | None,
        step: str | None,
        status: str,
        epoch: int = 0,
    ) -> None:
        """Record an accepted (``in``) or offered (``out``) handoff. Recording it again
        updates its status; a new ``epoch`` also forgets the previous attempt's outcome."""
        with self._tx() as db:
            self._upsert(db, handoff_id, direction, peer, tool, workflow_id, step, status, epoch)

    def finish_handoff(
        self,
        handoff_id: str,
        status: str,
        *,
        direction: Direction,
        peer: str,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
        code: str | None = None,
        receipt: dict[str, Any] | None = None,
        epoch: int | None = None,
    ) -> int:
        """Record how a handoff ended (only its attempt ``epoch``, if given). Returns the
        bytes of outcomes stored for ``peer`` in that direction, this one included."""
        with self._tx() as db:
            self._finish(
                db, handoff_id, status, direction, peer, outputs, error, code, receipt, epoch
            )
            return self._stored_bytes(db, direction, peer)

    @staticmethod
    def _stored_bytes(db: sqlite3.Connection, direction: Direction, peer: str) -> int:
        row = db.execute(
            "SELECT bytes FROM handoff_bytes WHERE direction = ? AND peer = ?", (direction, peer)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def record_outcome(
        self,
        handoff_id: str,
        *,
        direction: Direction,
        peer: str,
        tool: str,
        workflow_id: str | None,
        step: str | None,
        epoch: int,
        status: str,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
        code: str | None = None,
        receipt: dict[str, Any] | None = None,
        if_latest: bool = False,
    ) -> int:
        """:meth:`record_handoff` and :meth:`finish_handoff` in one transaction (returns what
        :meth:`finish_handoff` returns). ``if_latest``: not if a later attempt (a higher
        epoch) of the handoff is recorded already."""
        with self._tx() as db:
            if if_latest:
                row = db.execute(
                    "SELECT epoch FROM handoffs WHERE direction = ? AND peer = ?"
                    " AND handoff_id = ?",
                    (direction, peer, handoff_id),
                ).fetchone()
                if row is not None and row[0] > epoch:
                    return self._stored_bytes(db, direction, peer)
            self._upsert(db, handoff_id, direction, peer, tool, workflow_id, step, status, epoch)
            self._finish(
                db, handoff_id, status, direction, peer, outputs, error, code, receipt, epoch
            )
            return self._stored_bytes(db, direction, peer)

    def _upsert(
        self,
        db: sqlite3.Connection,
        handoff_id: str,
        direction: Direction,
        peer: str,
        tool: str,
        workflow_id: str | None,
        step: str | None,
        status: str,
        epoch: int,
    ) -> None:
        now = self._clock()
        db.execute(
            "INSERT INTO handoffs(direction, peer, handoff_id, epoch, workflow_id, step,"
            " tool, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(direction, peer, handoff_id) DO UPDATE SET"
            " status = excluded.status, updated_at = excluded.updated_at,"
            " outputs = CASE WHEN excluded.epoch = handoffs.epoch THEN handoffs.outputs END,"
            " error = CASE WHEN excluded.epoch = handoffs.epoch THEN handoffs.error END,"
            " code = CASE WHEN excluded.epoch = handoffs.epoch THEN handoffs.code END,"
            " receipt = CASE WHEN excluded.epoch = handoffs.epoch THEN handoffs.receipt END,"
            " size = CASE WHEN excluded.epoch = handoffs.epoch THEN handoffs.size ELSE 0 END,"
            " acked_at = CASE WHEN excluded.epoch = handoffs.epoch"
            " THEN handoffs.acked_at END,"
            " epoch = excluded.epoch",
            (direction, peer, handoff_id, epoch, workflow_id, step, tool, status, now, now),
        )

    def _finish(
        self,
        db: sqlite3.Connection,
        handoff_id: str,
        status: str,
        direction: Direction,
        peer: str,
        outputs: dict[str, Any] | None,
        error: str | None,
        code: str | None,
        receipt: dict[str, Any] | None,
        epoch: int | None,
    ) -> None:
        out_text = None if outputs is None else _dumps(outputs)
        size = len(out_text or "") + len(error or "")
        db.execute(
            "UPDATE handoffs SET status = ?, outputs = ?, error = ?, code = ?, receipt = ?,"
            " size = ?, updated_at = ? WHERE direction = ? AND peer = ? AND handoff_id = ?"
            " AND (? IS NULL OR epoch = ?)",
            (
                status,
                out_text,
                error,
                code,
                None if receipt is None else _dumps(receipt),
                size,
                self._clock(),
                direction,
                peer,
                handoff_id,
                epoch,
                epoch,
            ),
        )

    def get_handoff(
        self, handoff_id: str, *, direction: Direction, peer: str
    ) -> HandoffRecord | None:
        rows = self._query(
            "SELECT * FROM handoffs WHERE direction = ? AND peer = ? AND handoff_id = ?",
            (direction, peer, handoff_id),
        )
        return _record(rows[0]) if rows else None

    def peek(self, handoff_id: str, *, direction: Direction, peer: str) -> HandoffRecord | None:
        """:meth:`get_handoff` on a read connection of its own: it sees the last commit and
        never waits for the writer's lock or its fsync, so the event loop may call it. Raises
        :class:`JournalError` if SQLite is busy (a checkpoint resetting the log) for more than
        a few milliseconds, or the record stores more than ``PEEK_MAX_BYTES``: the caller
        then asks :meth:`get_handoff` in the worker thread."""
        with self._reader_lock:
            if self._closed:
                raise JournalError("journal is closed")
            try:
                if self._reader is None:
                    self._reader = sqlite3.connect(
                        str(self.path), check_same_thread=False, isolation_level=None, timeout=0.02
                    )
                    self._reader.row_factory = sqlite3.Row
                row = self._reader.execute(
                    "SELECT * FROM handoffs WHERE direction = ? AND peer = ? AND handoff_id = ?",
                    (direction, peer, handoff_id),
                ).fetchone()
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path} busy: {exc}") from exc
        if row is not None and row["size"] > PEEK_MAX_BYTES:
            # decoding a large stored outcome would hold up the event loop
            raise JournalError(f"handoff {handoff_id} stores {row['size']} bytes")
        return _record(row) if row is not None else None

    def acknowledge_many(self, acks: list[tuple[str, str, int]]) -> int:
        """:meth:`acknowledge` for each (handoff id, peer, epoch), in one transaction."""
        done = 0
        with self._tx() as db:
            for handoff_id, peer, epoch in acks:
                cur = db.execute(_ACK_SQL, (self._clock(), peer, handoff_id, epoch))
                done += cur.rowcount
        return done

    def acknowledge(self, handoff_id: str, *, peer: str, epoch: int) -> bool:
        """The delegator has the result of ``handoff_id`` (this epoch): drop the stored
        outputs and keep the record (a later offer of the same id and epoch runs again). True
        if something was acknowledged."""
        with self._tx() as db:
            cur = db.execute(_ACK_SQL, (self._clock(), peer, handoff_id, epoch))
            return cur.rowcount > 0

    def interrupt_accepted(self) -> int:
        """At start: handoffs accepted before a restart are not running any more."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE handoffs SET status = 'INTERRUPTED', updated_at = ?"
                " WHERE direction = 'in' AND status = 'ACCEPTED'",
                (self._clock(),),
            )
            return cur.rowcount

    def steps_of(self, workflow_id: str) -> list[HandoffRecord]:
        """What this node delegated for ``workflow_id`` (latest first per step)."""
        rows = self._query(
            "SELECT * FROM handoffs WHERE direction = 'out' AND workflow_id = ?"
            " ORDER BY updated_at DESC",
            (workflow_id,),
        )
        return [_record(r) for r in rows]

    def stored_bytes(self, peer: str | None = None) -> int:
        if peer is None:
            rows = self._query("SELECT coalesce(sum(bytes), 0) FROM handoff_bytes")
        else:
            rows = self._query(
                "SELECT coalesce(sum(bytes), 0) FROM handoff_bytes WHERE direction = 'in'"
                " AND peer = ?",
                (peer,),
            )
        return int(rows[0][0])

    def count(self) -> int:
        return int(self._query("SELECT count(*) FROM handoffs")[0][0])

    def prune(
        self,
        *,
        retention_s: float,
        max_bytes_per_peer: int | None = None,
        peer: str | None = None,
    ) -> int:
        """Forget finished handoffs not updated for ``retention_s``, and evict the oldest
        stored outcomes of ``peer`` beyond ``max_bytes_per_peer`` (their records stay, as
        acknowledged). Gives freed pages back to the file system. Returns rows changed."""
        cutoff = self._clock() - retention_s
        changed = 0
        with self._tx() as db:
            cur = db.execute(
                "DELETE FROM handoffs WHERE updated_at < ?"
                " AND status NOT IN ('ACCEPTED', 'RUNNING')",  # running, or being re-attached
                (cutoff,),
            )
            changed += cur.rowcount
            if peer is not None and max_bytes_per_peer is not None:
                rows = db.execute(
                    "SELECT handoff_id, size FROM handoffs WHERE direction = 'in' AND peer = ?"
                    " AND size > 0 ORDER BY updated_at DESC",
                    (peer,),
                ).fetchall()
                total = 0
                evict = []
                for hid, size in rows:
                    total += size
                    if total > max_bytes_per_peer:
                        evict.append(hid)
                for hid in evict:
                    db.execute(
                        "UPDATE handoffs SET outputs = NULL, error = NULL, size = 0,"
                        " acked_at = coalesce(acked_at, ?)"
                        " WHERE direction = 'in' AND peer = ? AND handoff_id = ?",
                        (self._clock(), peer, hid),
                    )
                changed += len(evict)
        if changed:
            with self._lock:
                self._db.execute("PRAGMA incremental_vacuum")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return changed

    def file_bytes(self) -> int:
        """The journal's size on disk (database and write-ahead log)."""
        total = 0
        for suffix in ("", "-wal"):
            with suppress(OSError):
                total += Path(str(self.path) + suffix).stat().st_size
        return total


class AsyncHandoffJournal:
    """The handoff journal from trio: every call runs in one worker thread."""

    def __init__(self, journal: HandoffJournal) -> None:
        self.sync = journal
        self._limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._limiter)

    async def lookup(
        self, handoff_id: str, *, direction: Direction, peer: str
    ) -> HandoffRecord | None:
        """What is stored of a handoff: :meth:`HandoffJournal.peek` on the event loop (no
        thread round trip), or in the worker thread when SQLite is busy."""
        try:
            return self.sync.peek(handoff_id, direction=direction, peer=peer)
        except JournalError:
            return await self.call(
                self.sync.get_handoff, handoff_id, direction=direction, peer=peer
            )
