"""The node's handoff journal: records, durable across reopen."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.handoff.journal import HandoffJournal as Journal
from node.handoff.journal import JournalError


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
def journal(path: Path, clock: FakeClock) -> Iterator[Journal]:
    j = Journal(path, clock=clock)
    try:
        yield j
    finally:
        j.close()


def test_handoff_records(journal: Journal, clock: FakeClock) -> None:
    assert journal.get_handoff("h1") is None
    journal.record_handoff(
        "h1",
        direction="in",
        peer="peer-a",
        tool="text.upper",
        workflow_id="wf-9",
        step="shout",
        status="ACCEPTED",
    )
    record = journal.get_handoff("h1")
    assert record is not None
    assert (record.direction, record.peer, record.tool) == ("in", "peer-a", "text.upper")
    assert (record.workflow_id, record.step, record.status) == ("wf-9", "shout", "ACCEPTED")
    assert record.outputs is None and record.error is None
    created = record.created_at
    clock.advance(2)
    journal.finish_handoff("h1", "SUCCESSFUL", outputs={"result": "HI"})
    record = journal.get_handoff("h1")
    assert record is not None
    assert record.status == "SUCCESSFUL"
    assert record.outputs == {"result": "HI"}
    assert record.created_at == created and record.updated_at == clock.now


def test_record_handoff_again_updates_only_the_status(journal: Journal, clock: FakeClock) -> None:
    journal.record_handoff(
        "h1", direction="in", peer="a", tool="t", workflow_id="w", step="s", status="ACCEPTED"
    )
    journal.finish_handoff("h1", "FAILED", error="boom")
    clock.advance(1)
    journal.record_handoff(
        "h1", direction="out", peer="b", tool="u", workflow_id=None, step=None, status="ACCEPTED"
    )
    record = journal.get_handoff("h1")
    assert record is not None
    assert (record.direction, record.peer, record.tool) == ("in", "a", "t")
    assert record.status == "ACCEPTED"
    assert record.updated_at == clock.now


def test_failed_handoff_keeps_its_error(journal: Journal) -> None:
    journal.record_handoff(
        "h2", direction="out", peer="b", tool="t", workflow_id=None, step=None, status="SENT"
    )
    journal.finish_handoff("h2", "FAILED", error="tool_failed: boom")
    record = journal.get_handoff("h2")
    assert record is not None
    assert (record.status, record.error, record.outputs) == ("FAILED", "tool_failed: boom", None)
    assert record.workflow_id is None and record.step is None


# -- durability ------------------------------------------------------------------------------


def test_data_survives_close_and_reopen(path: Path, clock: FakeClock) -> None:
    first = Journal(path, clock=clock)
    first.record_handoff(
        "h1", direction="in", peer="p", tool="t", workflow_id="wf-1", step="s", status="ACCEPTED"
    )
    first.finish_handoff("h1", "SUCCESSFUL", outputs={"text": "grüße 🐝"})
    first.close()

    second = Journal(path, clock=clock)
    try:
        handoff = second.get_handoff("h1")
        assert handoff is not None and handoff.status == "SUCCESSFUL"
        assert handoff.outputs == {"text": "grüße 🐝"}
    finally:
        second.close()


def test_wal_mode_is_on(journal: Journal, path: Path) -> None:
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_closed_journal_refuses_work(journal: Journal) -> None:
    journal.close()
    journal.close()  # closing twice is harmless
    with pytest.raises(JournalError, match="closed"):
        journal.get_handoff("h1")
    with pytest.raises(JournalError, match="closed"):
        journal.record_handoff(
            "h1", direction="in", peer="p", tool="t", workflow_id=None, step=None, status="X"
        )


def test_journal_that_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(JournalError, match="cannot open journal"):
        Journal(tmp_path / "dir.db")
