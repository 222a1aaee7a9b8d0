"""Poison-workflow quarantine in the engine, with real processes: a workflow whose resume
kills the process that resumes it (a SIGKILL while its stored inputs are loaded, as the OOM
killer or an operator's kill -9 would do) is resumed ``max_resume_attempts`` times, then
QUARANTINED instead of being resumed again; a resume that stalls is quarantined at once by
the watchdog; progress, the end of the workflow or a clean shutdown clear the count; a
quarantined workflow is resumed or deleted by hand.

The poison is an input (``engine_helpers.Poison``) whose unpickling kills or stalls the
process while a file exists; the journal is read directly (SQLite, read-only) to see the
counts. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import workflows as workflow
from tests.integration import engine_helpers as h
from workflows import WorkflowQuarantinedError, WorkflowStatus
from workflows import api as wf_api

POISON_ID = "poisoned"


@dataclass
class Interrupted:
    """A workflow POISON_ID whose driver was killed while its one step waited for
    ``release``; the files that poison its resume are not there yet."""

    storage: Path
    address: str
    tmp: Path
    trigger: Path  # while it exists, loading the workflow's inputs kills the process
    stall: Path  # while it exists, loading them hangs
    release: Path  # lets the step finish
    runs: Path  # one line per run of the step

    def resume_all_in_a_driver(self, name: str) -> h.Driver:
        go = self.tmp / "go"
        go.touch()
        return h.Driver("resume_all", self.storage, self.address, str(go), out=self.tmp / name)


def journal(storage: Path, wid: str = POISON_ID) -> dict[str, Any] | None:
    """The workflow's row as the journal has it (a read-only connection of its own)."""
    db = sqlite3.connect(f"file:{storage / 'workflows.db'}?mode=ro", uri=True)
    try:
        db.row_factory = sqlite3.Row
        row = db.execute(
            "SELECT status, owner, resume_attempts, quarantine FROM wf WHERE workflow_id = ?",
            (wid,),
        ).fetchone()
        return dict(row) if row is not None else None
    finally:
        db.close()


@contextlib.contextmanager
def engine_on(storage: Path, **settings: Any) -> Iterator[None]:
    """This process's workflow engine on ``storage`` (shut down afterwards)."""
    workflow.init(storage=storage, **settings)
    try:
        yield
    finally:
        wf_api.shutdown()


@pytest.fixture
def interrupted(ray_address: str, tmp_path: Path) -> Interrupted:
    case = Interrupted(
        storage=tmp_path / "storage",
        address=ray_address,
        tmp=tmp_path,
        trigger=tmp_path / "trigger",
        stall=tmp_path / "stall",
        release=tmp_path / "release",
        runs=tmp_path / "runs",
    )
    driver = h.Driver(
        "poisoned",
        case.storage,
        ray_address,
        POISON_ID,
        str(case.trigger),
        str(case.stall),
        str(case.release),
        str(case.runs),
        out=tmp_path / "first.out",
    )
    try:
        driver.wait_event("ready")
        h.wait_until(lambda: h.count_lines(case.runs) >= 1, what="the step to start")
    finally:
        driver.kill()
    row = journal(case.storage)
    assert row is not None and row["resume_attempts"] == 0 and row["quarantine"] is None
    return case


def test_a_workflow_whose_resume_kills_the_process_is_quarantined_not_resumed_forever(
    interrupted: Interrupted,
) -> None:
    case = interrupted
    case.trigger.touch()
    for attempt in (1, 2, 3):  # max_resume_attempts is 3 by default
        driver = case.resume_all_in_a_driver(f"resume{attempt}.out")
        code = driver.wait(60)
        # it died while loading the workflow: the resume was counted before that
        assert code == -signal.SIGKILL, driver.tail()
        row = journal(case.storage)
        assert row is not None
        assert (row["resume_attempts"], row["quarantine"]) == (attempt, None)
    # (the poison goes: a resume that wrongly loaded the workflow now would not die)
    case.trigger.unlink()
    driver = case.resume_all_in_a_driver("resume4.out")
    assert driver.wait_event("resumed")["ids"] == []
    assert driver.wait(60) == 0, driver.tail()
    row = journal(case.storage)
    assert row is not None and row["resume_attempts"] == 3
    assert "resumed 3 times in a row" in row["quarantine"]
    assert "max_resume_attempts" in row["quarantine"]
    assert h.count_lines(case.runs) == 1  # no resume got as far as running the step

    with engine_on(case.storage):
        assert workflow.get_status(POISON_ID) is WorkflowStatus.QUARANTINED
        assert workflow.list_all("QUARANTINED") == [(POISON_ID, WorkflowStatus.QUARANTINED)]
        assert workflow.resume_all() == []
        with pytest.raises(WorkflowQuarantinedError, match="QUARANTINED"):
            workflow.run(h.identity.bind(0), workflow_id=POISON_ID)  # an existing id
        with pytest.raises(workflow.WorkflowError, match="QUARANTINED"):
            workflow.get_output(POISON_ID)
        # by hand: it resumes, runs its step, and its end clears the count
        case.release.touch()
        assert workflow.resume(POISON_ID) == 1
        assert workflow.get_status(POISON_ID) is WorkflowStatus.SUCCESSFUL
    row = journal(case.storage)
    assert row is not None and (row["resume_attempts"], row["quarantine"]) == (0, None)
    assert h.count_lines(case.runs) == 2


def test_a_quarantined_workflow_can_be_deleted_and_its_id_used_again(
    interrupted: Interrupted,
) -> None:
    case = interrupted
    case.trigger.touch()
    driver = case.resume_all_in_a_driver("resume1.out")
    assert driver.wait(60) == -signal.SIGKILL, driver.tail()
    case.trigger.unlink()
    with engine_on(case.storage, max_resume_attempts=1):
        assert workflow.get_status(POISON_ID) is WorkflowStatus.RESUMABLE  # not marked yet
        assert workflow.resume_all() == []  # one death was the limit: marked now
        assert workflow.get_status(POISON_ID) is WorkflowStatus.QUARANTINED
        workflow.delete(POISON_ID)
        assert journal(case.storage) is None
        with pytest.raises(workflow.WorkflowNotFoundError):
            workflow.get_status(POISON_ID)
        assert workflow.run(h.identity.bind(5), workflow_id=POISON_ID) == 5


def test_a_resume_that_stalls_is_quarantined_at_once_and_progress_clears_the_mark(
    interrupted: Interrupted,
) -> None:
    case = interrupted
    case.stall.touch()
    with engine_on(case.storage, resume_stall_s=0.5):
        resumed = h.in_thread(workflow.resume, POISON_ID)  # hangs loading the inputs
        row = h.wait_until(
            lambda: (r := journal(case.storage)) is not None and r["quarantine"] and r,
            what="the watchdog to quarantine the stalled resume",
        )
        assert "resume_stall_s" in row["quarantine"]
        assert row["resume_attempts"] == 1
        assert not resumed.done()
        # the stall ends: the resume goes on, and its first committed step is a clean point
        case.release.touch()
        case.stall.unlink()
        assert resumed.result(timeout=60) == 1
    row = journal(case.storage)
    assert row is not None and (row["resume_attempts"], row["quarantine"]) == (0, None)


def test_a_clean_shutdown_is_a_clean_point(interrupted: Interrupted) -> None:
    case = interrupted
    with engine_on(case.storage):
        workflow.resume_async(POISON_ID)
        h.wait_until(lambda: h.count_lines(case.runs) >= 2, what="the resumed step to start")
        row = journal(case.storage)
        assert row is not None and row["resume_attempts"] == 1
    # handed back by shutdown(): the process did not die while running it
    row = journal(case.storage)
    assert row is not None and (row["owner"], row["resume_attempts"]) == (None, 0)
    case.release.touch()  # the step that shutdown() stops ends at once either way
