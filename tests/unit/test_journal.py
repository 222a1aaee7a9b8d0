"""The SQLite journal: workflows, steps and handoffs, durable across reopen."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from workflows.errors import WorkflowError
from workflows.journal import Journal, JournalError
from workflows.status import StepStatus, WorkflowStatus

STEPS = [("fetch", "util.echo"), ("shout", "text.upper"), ("count", "text.word_count")]


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


def create(journal: Journal, workflow_id: str = "wf-1", **changes: object) -> bool:
    args: dict[str, object] = {
        "name": "demo",
        "kind": "yaml",
        "spec": '{"id": "demo"}',
        "inputs": {"text": "hello"},
        "steps": STEPS,
    }
    args.update(changes)
    return journal.create_workflow(workflow_id, **args)  # type: ignore[arg-type]


def statuses(journal: Journal, workflow_id: str = "wf-1") -> dict[str, StepStatus]:
    return {s.name: s.status for s in journal.list_steps(workflow_id)}


# -- workflows -------------------------------------------------------------------------------


def test_create_workflow_records_it_and_its_steps(journal: Journal, clock: FakeClock) -> None:
    assert create(journal) is True
    record = journal.get_workflow("wf-1")
    assert record is not None
    assert (record.name, record.kind, record.spec) == ("demo", "yaml", '{"id": "demo"}')
    assert record.inputs == {"text": "hello"}
    assert record.status is WorkflowStatus.RUNNING
    assert record.created_at == record.updated_at == clock.now
    assert record.outputs is None and record.error is None and record.ended_at is None
    steps = journal.list_steps("wf-1")
    assert [(s.name, s.tool, s.position) for s in steps] == [
        ("fetch", "util.echo", 0),
        ("shout", "text.upper", 1),
        ("count", "text.word_count", 2),
    ]
    assert all(s.status is StepStatus.PENDING and s.attempts == 0 for s in steps)


def test_create_workflow_is_idempotent(journal: Journal, clock: FakeClock) -> None:
    assert create(journal) is True
    before = journal.get_workflow("wf-1")
    clock.advance(5)
    again = create(journal, name="other", inputs={"text": "changed"}, steps=[("x", "util.echo")])
    assert again is False
    assert journal.get_workflow("wf-1") == before
    assert [s.name for s in journal.list_steps("wf-1")] == ["fetch", "shout", "count"]
    assert len(journal.list_workflows()) == 1


def test_get_unknown_workflow(journal: Journal) -> None:
    assert journal.get_workflow("nope") is None
    assert journal.list_steps("nope") == []


def test_list_workflows_in_creation_order_and_by_status(journal: Journal, clock: FakeClock) -> None:
    create(journal, "wf-b")
    clock.advance(1)
    create(journal, "wf-a")
    journal.set_workflow_status("wf-b", WorkflowStatus.SUCCESSFUL, outputs={})
    assert [r.workflow_id for r in journal.list_workflows()] == ["wf-b", "wf-a"]
    running = journal.list_workflows({WorkflowStatus.RUNNING})
    assert [r.workflow_id for r in running] == ["wf-a"]


def test_successful_workflow_records_outputs_and_end(journal: Journal, clock: FakeClock) -> None:
    create(journal)
    clock.advance(3)
    journal.set_workflow_status("wf-1", WorkflowStatus.SUCCESSFUL, outputs={"n": 2})
    record = journal.get_workflow("wf-1")
    assert record is not None
    assert record.status is WorkflowStatus.SUCCESSFUL
    assert record.outputs == {"n": 2}
    assert record.ended_at == record.updated_at == clock.now


def test_failed_workflow_skips_pending_and_cancels_running_steps(
    journal: Journal, clock: FakeClock
) -> None:
    create(journal)
    journal.step_started("wf-1", "fetch", node="me", reason="local")
    journal.commit_step_result("wf-1", "fetch", {"v": 1}, node="me", reason="local")
    journal.step_started("wf-1", "shout", node="peer", reason="remote")
    clock.advance(2)
    journal.set_workflow_status("wf-1", WorkflowStatus.FAILED, error="step 'x' failed")
    assert statuses(journal) == {
        "fetch": StepStatus.SUCCESSFUL,
        "shout": StepStatus.CANCELED,
        "count": StepStatus.SKIPPED,
    }
    shout = journal.list_steps("wf-1")[1]
    assert shout.ended_at == clock.now
    record = journal.get_workflow("wf-1")
    assert record is not None
    assert record.status is WorkflowStatus.FAILED
    assert record.error == "step 'x' failed"
    assert record.ended_at == clock.now


def test_canceled_workflow_also_settles_its_steps(journal: Journal) -> None:
    create(journal)
    journal.step_started("wf-1", "fetch", node="me", reason="local")
    journal.set_workflow_status("wf-1", WorkflowStatus.CANCELED)
    assert statuses(journal) == {
        "fetch": StepStatus.CANCELED,
        "shout": StepStatus.SKIPPED,
        "count": StepStatus.SKIPPED,
    }


def test_non_terminal_status_has_no_end(journal: Journal) -> None:
    create(journal)
    journal.set_workflow_status("wf-1", WorkflowStatus.RESUMABLE)
    record = journal.get_workflow("wf-1")
    assert record is not None and record.ended_at is None
    assert statuses(journal)["fetch"] is StepStatus.PENDING


# -- steps -----------------------------------------------------------------------------------


def test_step_lifecycle_success(journal: Journal, clock: FakeClock) -> None:
    create(journal)
    assert journal.step_started("wf-1", "shout", node="peer-a", reason="remote: best") == 1
    step = journal.list_steps("wf-1")[1]
    assert step.status is StepStatus.RUNNING
    assert (step.node, step.reason, step.attempts) == ("peer-a", "remote: best", 1)
    assert step.started_at == clock.now and step.ended_at is None
    clock.advance(1)
    journal.step_placed("wf-1", "shout", node="peer-b", reason="remote: retry")
    clock.advance(1)
    journal.commit_step_result("wf-1", "shout", {"result": "HI"}, node="peer-b", reason="remote")
    step = journal.list_steps("wf-1")[1]
    assert step.status is StepStatus.SUCCESSFUL
    assert step.outputs == {"result": "HI"}
    assert (step.node, step.reason) == ("peer-b", "remote")
    assert step.attempts == 1
    assert step.ended_at == clock.now and step.error is None


def test_step_started_counts_attempts_and_clears_the_last_error(
    journal: Journal, clock: FakeClock
) -> None:
    create(journal)
    assert journal.step_started("wf-1", "count", node="me", reason="local") == 1
    journal.commit_step_failure("wf-1", "count", "boom", node=None, reason=None)
    step = journal.list_steps("wf-1")[2]
    assert step.status is StepStatus.FAILED
    assert step.error == "boom"
    assert (step.node, step.reason) == ("me", "local")  # kept when not given
    assert step.ended_at == clock.now
    clock.advance(1)
    assert journal.step_started("wf-1", "count", node="peer", reason="remote") == 2
    step = journal.list_steps("wf-1")[2]
    assert step.status is StepStatus.RUNNING
    assert step.error is None and step.ended_at is None
    assert (step.node, step.reason, step.attempts) == ("peer", "remote", 2)


def test_step_failure_records_where_it_failed(journal: Journal) -> None:
    create(journal)
    journal.step_started("wf-1", "fetch", node="me", reason="local")
    journal.commit_step_failure("wf-1", "fetch", "no peer", node="peer-x", reason="remote")
    step = journal.list_steps("wf-1")[0]
    assert (step.node, step.reason, step.error) == ("peer-x", "remote", "no peer")


def test_step_started_for_an_unknown_step(journal: Journal) -> None:
    create(journal)
    with pytest.raises(JournalError, match="has no step 'ghost'"):
        journal.step_started("wf-1", "ghost", node="me", reason="local")
    assert issubclass(JournalError, WorkflowError)


def test_reset_running_steps(journal: Journal) -> None:
    create(journal)
    journal.step_started("wf-1", "fetch", node="me", reason="local")
    journal.commit_step_result("wf-1", "fetch", {"v": 1}, node="me", reason="local")
    journal.step_started("wf-1", "shout", node="me", reason="local")
    journal.reset_running_steps("wf-1")
    assert statuses(journal) == {
        "fetch": StepStatus.SUCCESSFUL,  # finished work is never rerun
        "shout": StepStatus.PENDING,
        "count": StepStatus.PENDING,
    }
    assert journal.list_steps("wf-1")[1].attempts == 1  # the attempt is still counted


# -- handoffs --------------------------------------------------------------------------------


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
    create(first)
    first.step_started("wf-1", "fetch", node="me", reason="local")
    first.commit_step_result("wf-1", "fetch", {"text": "grüße 🐝"}, node="me", reason="local")
    first.record_handoff(
        "h1", direction="in", peer="p", tool="t", workflow_id="wf-1", step="s", status="ACCEPTED"
    )
    first.close()

    second = Journal(path, clock=clock)
    try:
        assert second.get_workflow("wf-1") is not None
        assert second.list_steps("wf-1")[0].outputs == {"text": "grüße 🐝"}
        assert statuses(second)["fetch"] is StepStatus.SUCCESSFUL
        handoff = second.get_handoff("h1")
        assert handoff is not None and handoff.status == "ACCEPTED"
        assert create(second) is False  # still idempotent after reopen
    finally:
        second.close()


def test_wal_mode_is_on(journal: Journal, path: Path) -> None:
    create(journal)
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_closed_journal_refuses_work(journal: Journal) -> None:
    journal.close()
    journal.close()  # closing twice is harmless
    with pytest.raises(JournalError, match="closed"):
        journal.get_workflow("wf-1")
    with pytest.raises(JournalError, match="closed"):
        create(journal)


def test_journal_that_cannot_be_opened(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(JournalError, match="cannot open journal"):
        Journal(tmp_path / "dir.db")
