"""The node's handoff journal: records, durable across reopen."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from node.handoff.journal import PEEK_MAX_BYTES, AsyncHandoffJournal, JournalError
from node.handoff.journal import HandoffJournal as Journal


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
    assert journal.get_handoff("h1", direction="in", peer="peer-a") is None
    journal.record_handoff(
        "h1",
        direction="in",
        peer="peer-a",
        tool="text.upper",
        workflow_id="wf-9",
        step="shout",
        status="ACCEPTED",
    )
    record = journal.get_handoff("h1", direction="in", peer="peer-a")
    assert record is not None
    assert (record.direction, record.peer, record.tool) == ("in", "peer-a", "text.upper")
    assert (record.workflow_id, record.step, record.status) == ("wf-9", "shout", "ACCEPTED")
    assert record.outputs is None and record.error is None and record.epoch == 0
    created = record.created_at
    clock.advance(2)
    journal.finish_handoff("h1", "SUCCESSFUL", direction="in", peer="peer-a", outputs={"r": "HI"})
    record = journal.get_handoff("h1", direction="in", peer="peer-a")
    assert record is not None
    assert record.status == "SUCCESSFUL"
    assert record.outputs == {"r": "HI"} and record.size == len('{"r":"HI"}')
    assert record.created_at == created and record.updated_at == clock.now


def test_the_same_id_from_two_peers_is_two_handoffs(journal: Journal) -> None:
    for peer in ("honest", "stranger"):
        journal.record_handoff(
            "wf/s@me",
            direction="in",
            peer=peer,
            tool="t",
            workflow_id="wf",
            step="s",
            status="ACCEPTED",
        )
    journal.finish_handoff(
        "wf/s@me", "SUCCESSFUL", direction="in", peer="stranger", outputs={"r": "FORGED"}
    )
    honest = journal.get_handoff("wf/s@me", direction="in", peer="honest")
    assert honest is not None and honest.status == "ACCEPTED" and honest.outputs is None
    assert journal.get_handoff("wf/s@me", direction="out", peer="honest") is None


def test_record_handoff_again_updates_the_status_and_a_new_epoch_forgets_the_outcome(
    journal: Journal, clock: FakeClock
) -> None:
    journal.record_handoff(
        "h1", direction="in", peer="a", tool="t", workflow_id="w", step="s", status="ACCEPTED"
    )
    journal.finish_handoff("h1", "FAILED", direction="in", peer="a", error="boom", code="x")
    clock.advance(1)
    journal.record_handoff(
        "h1", direction="in", peer="a", tool="u", workflow_id=None, step=None, status="ACCEPTED"
    )
    record = journal.get_handoff("h1", direction="in", peer="a")
    assert record is not None
    assert (record.tool, record.status, record.error, record.code) == ("t", "ACCEPTED", "boom", "x")
    assert record.updated_at == clock.now
    journal.record_handoff(
        "h1",
        direction="in",
        peer="a",
        tool="t",
        workflow_id="w",
        step="s",
        status="ACCEPTED",
        epoch=2,
    )
    record = journal.get_handoff("h1", direction="in", peer="a")
    assert record is not None
    assert (record.epoch, record.error, record.code, record.size) == (2, None, None, 0)


def test_peek_reads_the_last_commit_on_its_own_connection(journal: Journal) -> None:
    args = {"peer": "a", "tool": "t", "workflow_id": "w", "step": "s", "epoch": 1}
    assert journal.peek("h1", direction="in", peer="a") is None
    journal.record_handoff("h1", direction="in", status="ACCEPTED", **args)
    seen = journal.peek("h1", direction="in", peer="a")
    assert seen is not None and (seen.status, seen.epoch) == ("ACCEPTED", 1)
    journal.finish_handoff("h1", "SUCCESSFUL", direction="in", peer="a", outputs={"x": 1})
    seen = journal.peek("h1", direction="in", peer="a")
    assert seen is not None and (seen.status, seen.outputs) == ("SUCCESSFUL", {"x": 1})
    # keyed like every lookup: another peer, or the other direction, is another handoff
    assert journal.peek("h1", direction="in", peer="b") is None
    assert journal.peek("h1", direction="out", peer="a") is None


def test_peek_leaves_a_large_outcome_to_the_worker_thread(journal: Journal) -> None:
    """Decoding a large stored result would hold up the event loop: peek refuses, and the
    async lookup falls back to get_handoff in the journal's thread."""
    big = {"text": "x" * (PEEK_MAX_BYTES + 1)}
    args = {"peer": "a", "tool": "t", "workflow_id": "w", "step": "s", "epoch": 0}
    journal.record_outcome("h1", direction="out", status="SUCCESSFUL", outputs=big, **args)
    with pytest.raises(JournalError, match="stores"):
        journal.peek("h1", direction="out", peer="a")

    async def lookup() -> object:
        return await AsyncHandoffJournal(journal).lookup("h1", direction="out", peer="a")

    record = trio.run(lookup)
    assert getattr(record, "outputs", None) == big


def test_peek_after_close_is_a_journal_error(path: Path) -> None:
    j = Journal(path)
    assert j.peek("h", direction="in", peer="a") is None
    j.close()
    with pytest.raises(JournalError, match="closed"):
        j.peek("h", direction="in", peer="a")


def test_failed_handoff_keeps_its_error_and_code(journal: Journal) -> None:
    journal.record_handoff(
        "h2", direction="out", peer="b", tool="t", workflow_id=None, step=None, status="RUNNING"
    )
    journal.finish_handoff(
        "h2", "FAILED", direction="out", peer="b", error="boom", code="tool_failed"
    )
    record = journal.get_handoff("h2", direction="out", peer="b")
    assert record is not None
    assert (record.status, record.error, record.code) == ("FAILED", "boom", "tool_failed")
    assert record.workflow_id is None and record.step is None and record.outputs is None


def test_acknowledge_drops_the_stored_outputs_of_that_epoch_only(journal: Journal) -> None:
    journal.record_handoff(
        "h",
        direction="in",
        peer="p",
        tool="t",
        workflow_id="w",
        step="s",
        status="ACCEPTED",
        epoch=1,
    )
    journal.finish_handoff("h", "SUCCESSFUL", direction="in", peer="p", outputs={"r": "x" * 50})
    assert not journal.acknowledge("h", peer="p", epoch=0)
    assert not journal.acknowledge("h", peer="other", epoch=1)
    assert journal.stored_bytes("p") > 50
    assert journal.acknowledge("h", peer="p", epoch=1)
    assert not journal.acknowledge("h", peer="p", epoch=1)
    record = journal.get_handoff("h", direction="in", peer="p")
    assert record is not None and record.outputs is None and record.acked_at is not None
    assert journal.stored_bytes("p") == 0


def test_prune_forgets_old_finished_handoffs_and_bounds_each_peers_bytes(
    journal: Journal, clock: FakeClock
) -> None:
    def done(hid: str, peer: str, size: int) -> None:
        journal.record_handoff(
            hid,
            direction="in",
            peer=peer,
            tool="t",
            workflow_id="w",
            step=hid,
            status="ACCEPTED",
        )
        journal.finish_handoff(
            hid, "SUCCESSFUL", direction="in", peer=peer, outputs={"r": "x" * size}
        )
        clock.advance(1)

    journal.record_handoff(
        "running",
        direction="in",
        peer="p",
        tool="t",
        workflow_id="w",
        step="r",
        status="ACCEPTED",
    )
    done("old", "p", 10)
    clock.advance(100)
    for i in range(5):
        done(f"new{i}", "p", 1000)
    done("other", "q", 1000)
    assert journal.prune(retention_s=50) == 1  # "old" only; a running one is never pruned
    assert journal.get_handoff("old", direction="in", peer="p") is None
    assert journal.get_handoff("running", direction="in", peer="p") is not None
    journal.prune(retention_s=50, max_bytes_per_peer=2500, peer="p")
    kept = [
        r.outputs is not None
        for r in (journal.get_handoff(f"new{i}", direction="in", peer="p") for i in range(5))
        if r is not None
    ]
    assert kept == [False, False, False, True, True]  # the newest two fit in 2500 bytes
    assert journal.stored_bytes("p") <= 2500
    assert journal.stored_bytes("q") > 1000  # another peer's results are not touched


def _summed(path: Path) -> dict[tuple[str, str], int]:
    """Each (direction, peer)'s stored bytes, summed from its rows (what the totals keep)."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT direction, peer, sum(size) FROM handoffs GROUP BY direction, peer"
            " HAVING sum(size) != 0"
        ).fetchall()
    finally:
        db.close()
    return {(d, p): int(n) for d, p, n in rows}


def _totals(journal: Journal) -> dict[tuple[str, str], int]:
    out = {}
    for direction in ("in", "out"):
        for peer in ("p", "q", "r"):
            with journal._tx() as db:
                n = journal._stored_bytes(db, direction, peer)  # type: ignore[arg-type]
            if n:
                out[direction, peer] = n
    return out


def test_each_peers_stored_bytes_stay_equal_to_its_rows_through_every_kind_of_write(
    journal: Journal, path: Path, clock: FakeClock
) -> None:
    # a seeded walk over every write that changes a row's size: a new record, an outcome,
    # one recorded at once (if_latest), a new epoch, an ack, pruning by age and by bytes
    import random

    rng = random.Random(7)
    for i in range(400):
        hid = f"h{rng.randrange(40)}"
        direction = rng.choice(["in", "out"])
        peer = rng.choice(["p", "q", "r"])
        epoch = rng.randrange(3)
        kind = rng.randrange(7)
        if kind == 0:
            journal.record_handoff(
                hid,
                direction=direction,
                peer=peer,
                tool="t",
                workflow_id="w",
                step=hid,
                status="ACCEPTED",
                epoch=epoch,
            )
        elif kind == 1:
            journal.finish_handoff(
                hid,
                rng.choice(["SUCCESSFUL", "FAILED"]),
                direction=direction,
                peer=peer,
                outputs={"r": "x" * rng.randrange(300)},
                error=rng.choice([None, "boom" * rng.randrange(5)]),
                epoch=rng.choice([None, epoch]),
            )
        elif kind == 2:
            journal.record_outcome(
                hid,
                direction=direction,
                peer=peer,
                tool="t",
                workflow_id="w",
                step=hid,
                epoch=epoch,
                status="SUCCESSFUL",
                outputs={"r": "y" * rng.randrange(300)},
                if_latest=rng.random() < 0.5,
            )
        elif kind == 3:
            journal.acknowledge(hid, peer=peer, epoch=epoch)
        elif kind == 4:
            journal.prune(retention_s=rng.choice([5.0, 50.0]))
        elif kind == 5:
            journal.prune(retention_s=1e9, max_bytes_per_peer=rng.randrange(2000), peer=peer)
        else:
            journal.interrupt_accepted()
        clock.advance(rng.random() * 3)
        if i % 20 == 0:
            assert _totals(journal) == _summed(path)
    assert _totals(journal) == _summed(path)
    assert journal.stored_bytes() == sum(n for n in _summed(path).values())
    assert journal.stored_bytes("p") == _summed(path).get(("in", "p"), 0)


def test_a_journal_written_before_the_totals_gets_them_counted_once(path: Path) -> None:
    j = Journal(path)
    for i, peer in enumerate(["p", "p", "q"]):
        j.record_outcome(
            f"h{i}",
            direction="in",
            peer=peer,
            tool="t",
            workflow_id="w",
            step=f"s{i}",
            epoch=0,
            status="SUCCESSFUL",
            outputs={"r": "x" * 100},
        )
    j.close()
    # as a journal of the release before: no totals, no triggers
    db = sqlite3.connect(path)
    for name in ("insert", "update", "delete"):
        db.execute(f"DROP TRIGGER handoff_bytes_{name}")
    db.execute("DROP TABLE handoff_bytes")
    db.commit()
    db.close()
    j = Journal(path)
    try:
        assert j.stored_bytes("p") == _summed(path)["in", "p"] > 200
        assert j.stored_bytes("q") == _summed(path)["in", "q"]
        j.acknowledge("h0", peer="p", epoch=0)  # and kept from then on
        assert j.stored_bytes("p") == _summed(path)["in", "p"] < 200
    finally:
        j.close()
    Journal(path).close()  # opened again: counted once, not twice
    db = sqlite3.connect(path)
    try:
        kept = dict(((d, p), n) for d, p, n in db.execute("SELECT * FROM handoff_bytes"))
    finally:
        db.close()
    assert kept == _summed(path)


def test_interrupt_accepted_marks_what_a_restart_stopped(journal: Journal) -> None:
    journal.record_handoff(
        "h", direction="in", peer="p", tool="t", workflow_id="w", step="s", status="ACCEPTED"
    )
    journal.record_handoff(
        "o", direction="out", peer="p", tool="t", workflow_id="w", step="s", status="RUNNING"
    )
    assert journal.interrupt_accepted() == 1
    record = journal.get_handoff("h", direction="in", peer="p")
    assert record is not None and record.status == "INTERRUPTED"
    out = journal.get_handoff("o", direction="out", peer="p")
    assert out is not None and out.status == "RUNNING"


def test_a_version_1_journal_is_migrated(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE handoffs (
            handoff_id TEXT PRIMARY KEY, direction TEXT NOT NULL, peer TEXT NOT NULL,
            workflow_id TEXT, step TEXT, tool TEXT NOT NULL, status TEXT NOT NULL,
            outputs TEXT, error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL);
        INSERT INTO handoffs VALUES
            ('h1', 'in', 'p', 'w', 's', 't', 'SUCCESSFUL', '{"r":1}', NULL, 1.0, 2.0);
        """
    )
    db.commit()
    db.close()
    j = Journal(path)
    try:
        record = j.get_handoff("h1", direction="in", peer="p")
        assert record is not None and record.outputs == {"r": 1} and record.epoch == 0
        assert record.size == len('{"r":1}')
        assert j.stored_bytes("p") == len('{"r":1}')
    finally:
        j.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("SELECT value FROM meta").fetchone()[0] == "2"
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    finally:
        db.close()


def test_a_journal_from_a_newer_hivemesh_is_refused(path: Path) -> None:
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99'")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="newer than this hivemesh"):
        Journal(path)


# -- durability ------------------------------------------------------------------------------


def test_data_survives_close_and_reopen(path: Path, clock: FakeClock) -> None:
    first = Journal(path, clock=clock)
    first.record_handoff(
        "h1", direction="in", peer="p", tool="t", workflow_id="wf-1", step="s", status="ACCEPTED"
    )
    first.finish_handoff("h1", "SUCCESSFUL", direction="in", peer="p", outputs={"text": "grüße 🐝"})
    first.close()

    second = Journal(path, clock=clock)
    try:
        handoff = second.get_handoff("h1", direction="in", peer="p")
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
        journal.get_handoff("h1", direction="in", peer="p")
    with pytest.raises(JournalError, match="closed"):
        journal.record_handoff(
            "h1", direction="in", peer="p", tool="t", workflow_id=None, step=None, status="X"
        )


def test_journal_that_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(JournalError, match="cannot open journal"):
        Journal(tmp_path / "dir.db")


def test_an_outcome_recorded_if_latest_never_overwrites_a_later_attempt(journal: Journal) -> None:
    """A delegatee records a quick step's row and outcome in one transaction; a superseded
    attempt that finishes after the attempt that replaced it must not take the row back."""
    args = {"peer": "a", "tool": "t", "workflow_id": "w", "step": "s"}
    journal.record_outcome(
        "h", direction="in", status="SUCCESSFUL", outputs={"n": 4}, epoch=4, if_latest=True, **args
    )
    stored = journal.record_outcome(
        "h", direction="in", status="CANCELED", error="superseded", epoch=3, if_latest=True, **args
    )
    record = journal.get_handoff("h", direction="in", peer="a")
    assert record is not None and (record.epoch, record.status, record.outputs) == (
        4,
        "SUCCESSFUL",
        {"n": 4},
    )
    assert stored == record.size > 0
    # the same attempt, or a later one, is recorded
    journal.record_outcome(
        "h", direction="in", status="FAILED", error="boom", epoch=5, if_latest=True, **args
    )
    record = journal.get_handoff("h", direction="in", peer="a")
    assert record is not None and (record.epoch, record.status) == (5, "FAILED")
