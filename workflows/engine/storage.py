"""Durable storage of the workflow engine: SQLite (WAL) plus content-addressed blob files.

* One write connection, used under a lock by two kinds of committer, each batching its
  writes into one transaction (group commit): the engine thread commits the writes of a
  turn of its loop itself (:class:`WriteBatch`), and a writer thread commits what other
  threads queue (:meth:`Storage.submit`). A chain pays one fsync per step, a fan-out
  shares them. A write's ``on_commit`` callback runs only after its transaction
  committed. :meth:`Storage.transact` runs a check-then-write atomically, now (claims).
* Values at or above ``INLINE_LIMIT`` bytes are written to ``objects/<aa>/<sha256>``
  (temporary file, fsync, rename, fsync of the folder) before the row that points to
  them commits, so a committed row never points to a partial file.
* Every write is idempotent (keyed upserts), so retrying a commit whose outcome is unknown
  — it raised although it reached the disk — has no duplicate effect.
* Reads use their own connection (WAL readers never block the writer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workflows.errors import WorkflowError

log = logging.getLogger(__name__)

INLINE_LIMIT = 64 * 1024
FORMAT = 1  # bump when the stored graph or rows change incompatibly
MAX_BATCH = 2048

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS wf (
    workflow_id   TEXT PRIMARY KEY,
    status        TEXT NOT NULL,
    graph         BLOB NOT NULL,
    inputs        BLOB NOT NULL,
    user_metadata TEXT NOT NULL,
    output_task   TEXT,
    error         BLOB,
    error_text    TEXT,
    owner         TEXT,
    heartbeat     REAL,
    created_at    REAL NOT NULL,
    start_time    REAL,
    end_time      REAL,
    resume_attempts INTEGER NOT NULL DEFAULT 0,
    quarantine    TEXT
);
CREATE TABLE IF NOT EXISTS task (
    workflow_id   TEXT NOT NULL,
    task_id       TEXT NOT NULL,
    status        TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    output        BLOB,
    output_hash   TEXT,
    continuation  BLOB,
    timer_end     REAL,
    error_text    TEXT,
    tool          TEXT,
    node          TEXT,
    reason        TEXT,
    options       TEXT,
    user_metadata TEXT,
    start_time    REAL,
    end_time      REAL,
    PRIMARY KEY (workflow_id, task_id)
);
"""

# Columns added to a table after its first release, with their definitions: a journal made
# before them gets them when it is opened (older code reads such a journal and ignores them).
_ADDED_COLUMNS = {
    "wf": (
        # resumes since the workflow last made progress (a step committed), ended, or was
        # handed back by a clean shutdown: a crash while resuming it leaves this raised
        ("resume_attempts", "INTEGER NOT NULL DEFAULT 0"),
        # why the workflow is QUARANTINED (not resumed on its own), or NULL
        ("quarantine", "TEXT"),
    ),
    "task": (
        # how the step's last placement was decided (JSON: the candidates and their scores,
        # as the runner reported them), or NULL
        ("placement", "TEXT"),
    ),
}
MAX_PLACEMENT_BYTES = 16 * 1024  # of a step's placement detail (larger: not kept)

TaskStatusName = Literal["RUNNING", "SUCCESSFUL", "FAILED", "CONTINUED", "CANCELED"]


class StorageError(WorkflowError):
    """The workflow storage could not be opened or written."""


@dataclass(frozen=True)
class WorkflowRow:
    workflow_id: str
    status: str
    graph: bytes
    inputs: bytes
    user_metadata: dict[str, Any]
    output_task: str | None
    error: bytes | None
    error_text: str | None
    owner: str | None
    heartbeat: float | None
    created_at: float
    start_time: float | None
    end_time: float | None
    resume_attempts: int = 0
    quarantine: str | None = None


@dataclass(frozen=True)
class TaskRow:
    workflow_id: str
    task_id: str
    status: str
    attempts: int
    output: bytes | None
    output_hash: str | None
    continuation: bytes | None
    timer_end: float | None
    error_text: str | None
    options: dict[str, Any]
    user_metadata: dict[str, Any]
    start_time: float | None
    end_time: float | None
    tool: str | None = None
    node: str | None = None
    reason: str | None = None
    placement: dict[str, Any] | None = None

    @property
    def has_output(self) -> bool:
        return self.output is not None or self.output_hash is not None


def resolve_storage_path(storage: str | os.PathLike[str] | None) -> Path:
    if storage is None:
        env = os.environ.get("HIVEMESH_WORKFLOW_STORAGE")
        storage = env or str(Path.home() / ".hivemesh" / "workflows")
    text = os.fspath(storage)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif "://" in text:
        raise StorageError(f"unsupported storage URL {text!r}: use a path or file:// URL")
    return Path(text).expanduser().resolve()


@dataclass
class _Op:
    apply: Callable[[sqlite3.Connection], None]
    on_commit: Callable[[], None] | None
    blob: tuple[str, bytes] | None = None


CommitHook = Callable[[sqlite3.Connection], None]


class Storage:
    """The engine's journal. Thread-safe; writes are asynchronous with commit callbacks."""

    def __init__(
        self,
        root: Path,
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        after_commit_hook: CommitHook | None = None,
    ) -> None:
        self.root = root
        self.objects = root / "objects"
        self.synchronous = synchronous
        self._after_commit_hook = after_commit_hook
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
            self._db_path = root / "workflows.db"
            self._write = self._connect()
            self._write.executescript(_SCHEMA)
            self._add_columns()
            self._write.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('format', ?)", (str(FORMAT),)
            )
            found = self._write.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if found is not None and int(found[0]) != FORMAT:
                raise StorageError(
                    f"{root} holds a journal of format {found[0]}; this version reads {FORMAT}"
                )
            self._read = self._connect()
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open workflow storage at {root}: {exc}") from exc
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()  # the writer thread and caller-owned batches
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._idle = threading.Condition()
        self._pending = 0
        self._closed = False
        self._failure: BaseException | None = None
        self._failure_listeners: list[Callable[[BaseException], None]] = []
        self._writer = threading.Thread(
            target=self._write_loop, name="workflows-writer", daemon=True
        )
        self._writer.start()

    def _add_columns(self) -> None:
        """Give a journal made by an older version the columns added since (checked and
        added in one transaction: two processes opening it at once add them once)."""
        db = self._write
        db.execute("BEGIN IMMEDIATE")
        try:
            for table, columns in _ADDED_COLUMNS.items():
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                for name, definition in columns:
                    if name not in have:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            str(self._db_path), check_same_thread=False, isolation_level=None, timeout=60
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        return db

    # -- writing -------------------------------------------------------------------------

    def submit(
        self,
        apply: Callable[[sqlite3.Connection], None],
        on_commit: Callable[[], None] | None = None,
        blob: tuple[str, bytes] | None = None,
    ) -> None:
        """Queue a write. ``on_commit`` runs in the writer thread once it is durable."""
        self._queue.put(self._new_write(apply, on_commit, blob))

    def _new_write(
        self,
        apply: Callable[[sqlite3.Connection], None],
        on_commit: Callable[[], None] | None,
        blob: tuple[str, bytes] | None,
    ) -> _Op:
        """A write that ``flush()`` now waits for (refused once closed or failed)."""
        if self._closed:
            raise StorageError("workflow storage is closed")
        if self._failure is not None:
            raise StorageError(f"workflow storage failed: {self._failure}")
        with self._idle:
            self._pending += 1
        return _Op(apply, on_commit, blob)

    def transact(self, apply: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``apply`` in one write transaction, now, in this thread, and commit it
        durably; return its result. An exception from ``apply`` rolls it back and is
        raised here. For check-then-write steps that must be atomic across processes
        (claiming a workflow): ``BEGIN IMMEDIATE`` holds SQLite's write lock throughout."""
        if self._closed:
            raise StorageError("workflow storage is closed")
        result: list[Any] = []

        def run(db: sqlite3.Connection) -> None:
            result[:] = [apply(db)]  # a retried commit re-applies: keep the last result

        try:
            with self._write_lock:
                self._commit([_Op(run, None)])
        except (sqlite3.Error, _CommitOutcomeUnknown) as exc:
            raise StorageError(f"workflow storage write failed: {exc}") from exc
        return result[0]

    def batch(self) -> WriteBatch:
        """A batch of writes that its owner commits in its own thread (group commit
        without a thread hop; the engine commits one per turn of its loop)."""
        return WriteBatch(self)

    @property
    def failure(self) -> BaseException | None:
        """The error that stopped the writer, if any (then nothing more is written)."""
        return self._failure

    def on_failure(self, listener: Callable[[BaseException], None]) -> None:
        """Call ``listener(exc)`` (in the writer thread) if the journal stops working."""
        self._failure_listeners.append(listener)

    def write_sync(self, apply: Callable[[sqlite3.Connection], None]) -> None:
        """Queue a write and wait until it is durable."""
        done = threading.Event()
        self.submit(apply, done.set)
        while not done.wait(0.5):
            if self._failure is not None:
                raise StorageError(f"workflow storage failed: {self._failure}")

    def flush(self) -> None:
        """Wait until every queued write has committed."""
        with self._idle:
            while self._pending and self._failure is None:
                self._idle.wait(0.5)

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        self._queue.put(None)
        self._writer.join(30)
        self._write.close()
        self._read.close()

    def _write_loop(self) -> None:
        while True:
            op = self._queue.get()
            if op is None:
                return
            batch = [op]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            self._commit_and_notify(batch)

    def _commit_and_notify(self, batch: list[_Op]) -> None:
        """Commit ``batch``, then run its callbacks in this thread (none if it failed)."""
        try:
            with self._write_lock:
                self._commit(batch)
        except BaseException as exc:  # the engine must hear about it, not hang
            log.exception("workflow storage write failed")
            self._failure = exc
            for listener in self._failure_listeners:
                try:
                    listener(exc)
                except Exception:
                    log.exception("storage failure listener failed")
        finally:
            with self._idle:
                self._pending -= len(batch)
                self._idle.notify_all()
        if self._failure is None:
            for item in batch:
                if item.on_commit is not None:
                    try:
                        item.on_commit()
                    except Exception:
                        log.exception("commit callback failed")

    def _commit(self, batch: list[_Op]) -> None:
        for item in batch:
            if item.blob is not None:
                self._write_blob(*item.blob)
        attempts = 0
        while True:
            attempts += 1
            try:
                self._write.execute("BEGIN IMMEDIATE")
                try:
                    for item in batch:
                        item.apply(self._write)
                except BaseException:
                    self._write.execute("ROLLBACK")
                    raise
                self._write.execute("COMMIT")
                if self._after_commit_hook is not None:
                    self._after_commit_hook(self._write)
                return
            except sqlite3.OperationalError as exc:
                # The outcome of a failed COMMIT is unknown; every write is an idempotent
                # upsert, so applying the batch again cannot duplicate anything.
                if self._write.in_transaction:
                    self._write.execute("ROLLBACK")
                if attempts >= 5:
                    raise
                log.warning("journal commit failed (%s); retrying", exc)
                time.sleep(0.05 * attempts)
            except _CommitOutcomeUnknown:
                if attempts >= 5:
                    raise
                log.warning("journal commit reported failure after writing; re-applying")

    def _write_blob(self, digest: str, data: bytes) -> None:
        path = self.blob_path(digest)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if self.synchronous == "FULL":
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.synchronous == "FULL":
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def blob_path(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest

    @staticmethod
    def split_value(data: bytes) -> tuple[bytes | None, str | None, tuple[str, bytes] | None]:
        """(inline bytes, blob digest, blob to write) for a serialized value."""
        if len(data) < INLINE_LIMIT:
            return data, None, None
        digest = hashlib.sha256(data).hexdigest()
        return None, digest, (digest, data)

    def load_value_bytes(self, row: TaskRow) -> bytes:
        if row.output is not None:
            return bytes(row.output)
        if row.output_hash is None:
            raise StorageError(f"task {row.task_id!r} has no stored output")
        try:
            return self.blob_path(row.output_hash).read_bytes()
        except OSError as exc:
            raise StorageError(f"output of task {row.task_id!r} is missing: {exc}") from exc

    # -- reading -------------------------------------------------------------------------

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._read_lock:
            cur = self._read.execute(sql, tuple(args))
            cur.row_factory = sqlite3.Row
            return list(cur.fetchall())

    def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        rows = self._rows("SELECT * FROM wf WHERE workflow_id = ?", (workflow_id,))
        return _wf_row(rows[0]) if rows else None

    def list_workflows(self) -> list[WorkflowRow]:
        return [_wf_row(r) for r in self._rows("SELECT * FROM wf ORDER BY created_at")]

    def get_task(self, workflow_id: str, task_id: str) -> TaskRow | None:
        rows = self._rows(
            "SELECT * FROM task WHERE workflow_id = ? AND task_id = ?", (workflow_id, task_id)
        )
        return _task_row(rows[0]) if rows else None

    def list_tasks(self, workflow_id: str) -> list[TaskRow]:
        rows = self._rows("SELECT * FROM task WHERE workflow_id = ? ORDER BY rowid", (workflow_id,))
        return [_task_row(r) for r in rows]

    def referenced_blobs(self) -> set[str]:
        rows = self._rows("SELECT DISTINCT output_hash FROM task WHERE output_hash IS NOT NULL")
        return {r[0] for r in rows}


class WriteBatch:
    """Writes committed together, in the thread that calls :meth:`commit`.

    ``flush()`` waits for added writes as for queued ones, so the owner must commit
    soon (the engine commits at the end of every turn of its loop)."""

    __slots__ = ("_ops", "_storage")

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._ops: list[_Op] = []

    def __bool__(self) -> bool:
        return bool(self._ops)

    def add(
        self,
        apply: Callable[[sqlite3.Connection], None],
        on_commit: Callable[[], None] | None = None,
        blob: tuple[str, bytes] | None = None,
    ) -> None:
        self._ops.append(self._storage._new_write(apply, on_commit, blob))

    def commit(self) -> None:
        """Commit what was added so far (durably), then run its ``on_commit`` callbacks
        here. Writes that callbacks add go into the next commit."""
        storage = self._storage
        while self._ops:
            if storage._failure is not None:
                self.discard()
                return
            ops, self._ops = self._ops, []
            for start in range(0, len(ops), MAX_BATCH):
                storage._commit_and_notify(ops[start : start + MAX_BATCH])

    def discard(self) -> None:
        """Forget what was added (the storage failed: it cannot be committed)."""
        storage = self._storage
        with storage._idle:
            storage._pending -= len(self._ops)
            storage._idle.notify_all()
        self._ops = []


class _CommitOutcomeUnknown(Exception):
    """Raised by a commit hook to simulate a commit that succeeded but reported failure."""


CommitOutcomeUnknown = _CommitOutcomeUnknown


def _wf_row(r: sqlite3.Row) -> WorkflowRow:
    return WorkflowRow(
        workflow_id=r["workflow_id"],
        status=r["status"],
        graph=r["graph"],
        inputs=r["inputs"],
        user_metadata=json.loads(r["user_metadata"]),
        output_task=r["output_task"],
        error=r["error"],
        error_text=r["error_text"],
        owner=r["owner"],
        heartbeat=r["heartbeat"],
        created_at=r["created_at"],
        start_time=r["start_time"],
        end_time=r["end_time"],
        resume_attempts=r["resume_attempts"],
        quarantine=r["quarantine"],
    )


def _task_row(r: sqlite3.Row) -> TaskRow:
    return TaskRow(
        workflow_id=r["workflow_id"],
        task_id=r["task_id"],
        status=r["status"],
        attempts=r["attempts"],
        output=r["output"],
        output_hash=r["output_hash"],
        continuation=r["continuation"],
        timer_end=r["timer_end"],
        error_text=r["error_text"],
        options=json.loads(r["options"]) if r["options"] else {},
        user_metadata=json.loads(r["user_metadata"]) if r["user_metadata"] else {},
        start_time=r["start_time"],
        end_time=r["end_time"],
        tool=r["tool"],
        node=r["node"],
        reason=r["reason"],
        placement=_placement(r["placement"]),
    )


def _placement(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
