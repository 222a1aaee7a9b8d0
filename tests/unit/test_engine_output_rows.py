"""Step outputs journaled as one group (``_OutputRows``): one ``executemany`` in the turn's
transaction, each row's callback after the commit, in order. Real SQLite journal, no Ray."""

from __future__ import annotations

import pickle
import sqlite3
import time
from pathlib import Path
from typing import Any

from workflows.engine.execution import _OutputRows
from workflows.engine.storage import CommitOutcomeUnknown, Storage


class _Owner:
    """What ``_OutputRows`` reads of the engine: its open group."""

    def __init__(self) -> None:
        self._open_rows: _OutputRows | None = None


def _row(workflow_id: str, task_id: str, value: Any) -> tuple[Any, ...]:
    now = time.time()
    return (workflow_id, task_id, pickle.dumps(value), None, None, None, now, now, None, None, None)


def _add_workflow(storage: Storage, workflow_id: str, resume_attempts: int = 0) -> None:
    def insert(db: sqlite3.Connection) -> None:
        db.execute(
            "INSERT INTO wf(workflow_id, status, graph, inputs, user_metadata, created_at,"
            " resume_attempts) VALUES (?, 'RUNNING', x'', x'', '{}', ?, ?)",
            (workflow_id, time.time(), resume_attempts),
        )

    storage.transact(insert)


def _group(owner: _Owner, rows: list[tuple[Any, ...]], seen: list[str]) -> _OutputRows:
    group = _OutputRows(owner)  # type: ignore[arg-type]
    for row in rows:
        group.add(row, lambda tid=row[1]: seen.append(tid), None)
    owner._open_rows = group
    return group


def test_a_group_commits_every_row_then_runs_the_callbacks_in_order(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    try:
        owner = _Owner()
        seen: list[str] = []
        group = _group(owner, [_row("w", f"s{i}", i * 10) for i in range(5)], seen)
        batch = storage.batch()
        batch.add(group.apply, group.committed)
        assert seen == []  # nothing before the commit
        batch.commit()
        assert seen == [f"s{i}" for i in range(5)]
        assert owner._open_rows is None  # applied: later rows start a new group
        rows = storage.list_tasks("w")
        assert [(r.task_id, r.status, pickle.loads(r.output or b"")) for r in rows] == [
            (f"s{i}", "SUCCESSFUL", i * 10) for i in range(5)
        ]
    finally:
        storage.close()


def test_a_retried_commit_applies_the_same_rows_once_more_without_duplicates(
    tmp_path: Path,
) -> None:
    failures = [1]

    def hook(db: sqlite3.Connection) -> None:
        if failures:  # the commit reached the disk but reports failure, once
            failures.pop()
            raise CommitOutcomeUnknown("simulated")

    storage = Storage(tmp_path, after_commit_hook=hook)
    try:
        owner = _Owner()
        seen: list[str] = []
        group = _group(owner, [_row("w", "a", 1), _row("w", "b", 2)], seen)
        batch = storage.batch()
        batch.add(group.apply, group.committed)
        batch.commit()
        assert failures == []  # the hook did fire
        assert seen == ["a", "b"]  # each callback once
        rows = storage.list_tasks("w")
        assert [(r.task_id, r.attempts, pickle.loads(r.output or b"")) for r in rows] == [
            ("a", 1, 1),
            ("b", 1, 2),
        ]
    finally:
        storage.close()


def test_no_callback_runs_for_a_group_that_did_not_commit(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    try:
        owner = _Owner()
        seen: list[str] = []
        # the second row is malformed: the statement fails, the transaction rolls back
        group = _group(owner, [_row("w", "a", 1), ("w", "b")], seen)
        batch = storage.batch()
        batch.add(group.apply, group.committed)
        batch.commit()
        assert seen == []
        assert storage.failure is not None
        assert storage.list_tasks("w") == []  # not even the well-formed row
    finally:
        storage.close()


def test_a_row_marked_clean_clears_its_workflows_resume_count_in_the_same_commit(
    tmp_path: Path,
) -> None:
    storage = Storage(tmp_path)
    try:
        _add_workflow(storage, "w", resume_attempts=2)
        _add_workflow(storage, "other", resume_attempts=2)
        owner = _Owner()
        group = _OutputRows(owner)  # type: ignore[arg-type]
        group.add(_row("w", "a", 1), lambda: None, "w")
        group.add(_row("other", "b", 2), lambda: None, None)
        batch = storage.batch()
        batch.add(group.apply, group.committed)
        batch.commit()
        found = {r.workflow_id: r.resume_attempts for r in storage.list_workflows()}
        assert found == {"w": 0, "other": 2}
    finally:
        storage.close()
