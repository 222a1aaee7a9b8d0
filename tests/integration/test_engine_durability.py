"""Durability of the workflow engine: SIGKILL of a real driver, commits whose outcome is
unknown, torn temporary files. The journal (``workflows.engine.storage.Storage``) is read directly
to know what was committed before a crash."""

from __future__ import annotations

import functools
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray

import workflows as workflow
from tests.integration import engine_helpers as h
from workflows import WorkflowError, WorkflowStatus
from workflows import api as wf_api
from workflows.engine.execution import PIPELINE_WINDOW
from workflows.engine.lifecycle import Engine
from workflows.engine.storage import CommitOutcomeUnknown, Storage, TaskRow

CHAIN_STEPS = 200


@ray.remote
def blob_of(n: int) -> bytes:
    return bytes(range(251)) * (n // 251)


def _tasks(root: Path, wid: str) -> list[TaskRow]:
    journal = Storage(root)
    try:
        return journal.list_tasks(wid)
    finally:
        journal.close()


def _run_with_hook(
    root: Path, hook: Callable[[Any], None], dag: Any, wid: str, timeout_s: float
) -> Any:
    """Run ``dag`` on an engine whose journal calls ``hook`` after every commit."""
    storage = Storage(root, after_commit_hook=hook)
    engine = Engine(storage)
    try:
        return engine.start(dag, (), {}, wid, {}).result(timeout=timeout_s)
    finally:
        engine.shutdown()
        storage.close()


def test_sigkill_mid_chain_reruns_no_committed_step(
    wf_storage: Path, tmp_path: Path, ray_address: str
) -> None:
    seed = int(os.environ.get("ENGINE_KILL_SEED", time.time_ns() % 2**32))
    kill_at = random.Random(seed).randint(5, CHAIN_STEPS - 10)
    why = f"(ENGINE_KILL_SEED={seed}, killed after {kill_at} logged steps)"
    log = tmp_path / "chain.log"

    driver = h.Driver("chain", wf_storage, ray_address, str(log), out=tmp_path / "drv.out")
    try:
        driver.wait_event("ready")
        h.wait_until(lambda: h.count_lines(log) >= kill_at, what=f"{kill_at} steps {why}")
    finally:
        driver.kill()
    assert driver.event("done") is None, f"the chain finished before the kill {why}"

    committed = {
        int(t.task_id[1:]) for t in _tasks(wf_storage, h.CHAIN_ID) if t.status == "SUCCESSFUL"
    }
    before = h.index_counts(log)
    m = len(committed)
    # the at-least-once window: pipelined steps run before the steps they read commit, at
    # most PIPELINE_WINDOW of them beyond the committed prefix (plus the one in flight)
    window = PIPELINE_WINDOW
    assert committed == set(range(m)), why  # a chain commits in order
    assert m >= kill_at - 1 - window, why  # commits trail what ran by at most the window
    assert not [i for i in range(m + 1 + window, CHAIN_STEPS) if before[i]], why

    assert workflow.get_status(h.CHAIN_ID) is WorkflowStatus.RESUMABLE
    assert workflow.resume(h.CHAIN_ID) == CHAIN_STEPS
    after = h.index_counts(log)
    assert set(after) == set(range(CHAIN_STEPS)), why
    assert {i: after[i] for i in committed if after[i] != 1} == {}, why  # none ran again
    # only steps of the window (in flight or pipelined, never committed) ran twice
    assert {i for i, n in after.items() if n > 1} <= set(range(m, m + 1 + window)), why
    assert max(after.values()) <= 2, why


def test_two_processes_resuming_at_once_run_a_workflow_once(
    wf_storage: Path, tmp_path: Path, ray_address: str
) -> None:
    """Taking ownership is one transaction: of two drivers that call resume_all() on the
    same storage at the same moment, exactly one resumes the interrupted chain."""
    log = tmp_path / "chain.log"
    victim = h.Driver("chain", wf_storage, ray_address, str(log), out=tmp_path / "drv.out")
    try:
        victim.wait_event("ready")
        h.wait_until(lambda: h.count_lines(log) >= 20, what="20 chain steps")
    finally:
        victim.kill()

    go = tmp_path / "go"
    racers = [
        h.Driver("resume_all", wf_storage, ray_address, str(go), out=tmp_path / f"racer{i}.out")
        for i in range(2)
    ]
    try:
        for racer in racers:
            racer.wait_event("ready")
        h.touch(go)
        finished = [racer.wait_event("done", timeout_s=120) for racer in racers]
    finally:
        for racer in racers:
            racer.kill()
    assert sorted(len(f["result"]) for f in finished) == [0, 1]
    assert [f["result"] for f in finished if f["result"]] == [{h.CHAIN_ID: CHAIN_STEPS}]
    counts = h.index_counts(log)
    assert set(counts) == set(range(CHAIN_STEPS))
    # the steps in flight at the kill (the one running, and those pipelined after it: at
    # most PIPELINE_WINDOW) may run twice, and only once more; nothing else does
    twice = sorted(i for i, n in counts.items() if n > 1)
    assert len(twice) <= 1 + PIPELINE_WINDOW, counts.most_common(3)
    assert twice == list(range(twice[0], twice[0] + len(twice))) if twice else True
    assert max(counts.values()) <= 2


def test_commit_outcome_unknown_duplicates_no_effect_or_row(
    ray_cluster: None, tmp_path: Path
) -> None:
    fired: list[int] = []

    def hook(db: Any) -> None:
        if fired:
            return
        done = db.execute("SELECT COUNT(*) FROM task WHERE status = 'SUCCESSFUL'").fetchone()[0]
        if done >= 2:
            fired.append(done)
            raise CommitOutcomeUnknown("the commit reached the disk but reported failure")

    log = tmp_path / "log"
    root = tmp_path / "journal"
    assert _run_with_hook(root, hook, h.logged_chain(5, str(log)), "unknown", 60) == 5
    assert fired == [2]
    assert h.read_lines(log) == ["0", "1", "2", "3", "4"]
    rows = _tasks(root, "unknown")
    assert [r.task_id for r in rows] == [f"s{i:03d}" for i in range(5)]
    assert [r.status for r in rows] == ["SUCCESSFUL"] * 5
    journal = Storage(root)
    try:
        assert [w.workflow_id for w in journal.list_workflows()] == ["unknown"]
        assert journal.get_workflow("unknown").status == "SUCCESSFUL"  # type: ignore[union-attr]
    finally:
        journal.close()


def test_commit_outcome_unknown_reapplies_idempotently(ray_cluster: None, tmp_path: Path) -> None:
    fired: list[int] = []

    def hook(db: Any) -> None:
        if (
            not fired
            and db.execute("SELECT COUNT(*) FROM task WHERE status = 'SUCCESSFUL'").fetchone()[0]
        ):
            fired.append(1)
            raise CommitOutcomeUnknown("the commit reached the disk but reported failure")

    root = tmp_path / "journal"
    assert _run_with_hook(root, hook, h.logged_chain(2, str(tmp_path / "log")), "idem", 60) == 2
    assert fired == [1]
    assert [r.attempts for r in _tasks(root, "idem")] == [1, 1]


def test_a_journal_that_keeps_failing_fails_the_workflow(ray_cluster: None, tmp_path: Path) -> None:
    def hook(db: Any) -> None:
        raise CommitOutcomeUnknown("the disk keeps failing")

    outcome: list[BaseException | None] = []

    def run() -> None:  # in a daemon thread: on this bug it never returns
        try:
            _run_with_hook(tmp_path / "journal", hook, h.add.bind(1, 2), "doomed", 5)
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    threading.Thread(target=run, daemon=True).start()
    h.wait_until(lambda: outcome, timeout_s=5, what="run() to return or raise")
    assert isinstance(outcome[0], WorkflowError)


def test_torn_temp_files_in_objects_do_not_break_recovery(wf_storage: Path, tmp_path: Path) -> None:
    flag, runs = tmp_path / "flag", tmp_path / "runs"
    size = 200_000  # above the inline limit: stored as a blob file
    data = bytes(range(251)) * (size // 251)
    big = blob_of.options(**workflow.options(task_id="big")).bind(size)
    dag = h.fail_unless_flag.bind(str(flag), str(runs), big)
    with pytest.raises(ValueError):
        workflow.run(dag, workflow_id="torn")
    wf_api.shutdown()

    objects = wf_storage / "objects"
    [blob] = [p for p in objects.rglob("*") if p.is_file() and not p.name.startswith(".")]
    # what a crash in the middle of writing blobs leaves behind
    (objects / "xx").mkdir()
    (objects / "xx" / ".tmpfile").write_bytes(b"\x80\x05partial pickle")
    (blob.parent / f".{blob.name}.4242.1.tmp").write_bytes(blob.read_bytes()[:1000])

    workflow.init(storage=wf_storage)
    h.touch(flag)
    assert workflow.resume("torn") == data
    assert workflow.get_output("torn", task_id="big") == data
    assert h.count_lines(runs) == 2


KILLS = int(os.environ.get("ENGINE_KILLS", "50"))


def chain_driver(storage: Path, address: str, wid: str, log: Path, out: Path) -> h.Driver:
    """A driver that runs the logged chain ``wid``, or resumes it if it exists."""
    return h.Driver(
        "chain_or_resume", storage, address, wid, str(KILL_CHAIN_STEPS), str(log), out=out
    )


def _ran_steps(driver: h.Driver, log: Path, lines: int) -> bool:
    return (h.count_lines(log) if log.exists() else 0) > lines or driver.event("done") is not None


KILL_CHAIN_STEPS = 600


def test_many_random_driver_kills_during_pipelined_chains(
    wf_storage: Path, tmp_path: Path, ray_address: str
) -> None:
    """SIGKILL the driver of pipelined chains at random moments, KILLS times in a row (each
    time a new driver resumes the chain, or starts the next one once it has finished): every
    chain ends with the right output, every step ran, and no step ran again once it had
    been committed (the log of each step's runs is checked after every kill)."""
    seed = int(os.environ.get("ENGINE_KILL_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    chain = 0
    wid, log = f"kill-{chain}", tmp_path / f"kill-{chain}.log"
    committed: set[str] = set()
    counts_then = h.index_counts(log) if log.exists() else None
    finished: list[str] = []
    progress: list[int] = []  # committed steps after each kill
    kills = 0
    while kills < KILLS:
        why = f"(ENGINE_KILL_SEED={seed}, kill {kills + 1} of {KILLS}, chain {wid})"
        driver = chain_driver(wf_storage, ray_address, wid, log, tmp_path / f"drv-{kills}.out")
        lines = h.count_lines(log) if log.exists() else 0
        try:
            driver.wait_event("ready")
            # once it runs steps (a resume first loads and claims the chain): a moment from
            # "its first step" to "well into the chain"
            h.wait_until(
                functools.partial(_ran_steps, driver, log, lines),
                60.0,
                f"the driver to run steps {why}",
            )
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            driver.kill()
        kills += 1
        rows = {t.task_id: t for t in _tasks(wf_storage, wid)}
        counts = h.index_counts(log) if log.exists() else Counter()
        if counts_then is not None:
            ran_again = {
                tid: (counts_then[int(tid[1:])], counts[int(tid[1:])])
                for tid in committed
                if counts[int(tid[1:])] != counts_then[int(tid[1:])]
            }
            assert ran_again == {}, f"committed steps ran again {why}"
        committed = {tid for tid, row in rows.items() if row.status == "SUCCESSFUL"}
        progress.append(len(committed))
        ordered = sorted(int(tid[1:]) for tid in committed)
        assert ordered == list(range(len(ordered))), f"not a committed prefix {why}"
        assert max(counts.values(), default=0) <= kills, why
        counts_then = counts
        if driver.event("done") is not None or len(committed) == KILL_CHAIN_STEPS:
            assert workflow.get_status(wid) is WorkflowStatus.SUCCESSFUL, why
            assert workflow.get_output(wid) == KILL_CHAIN_STEPS, why
            assert set(counts) == set(range(KILL_CHAIN_STEPS)), why
            finished.append(wid)
            chain += 1
            wid, log = f"kill-{chain}", tmp_path / f"kill-{chain}.log"
            committed, counts_then = set(), None
    # the last chain, finished by one more driver that is not killed
    last = chain_driver(wf_storage, ray_address, wid, log, tmp_path / "drv-last.out")
    try:
        done = last.wait_event("done", timeout_s=120)
    finally:
        last.kill()
    assert done["result"] == KILL_CHAIN_STEPS
    counts = h.index_counts(log)
    assert set(counts) == set(range(KILL_CHAIN_STEPS))
    if counts_then is not None:
        assert all(counts[int(t[1:])] == counts_then[int(t[1:])] for t in committed)
    # most kills fell while a chain ran (not before its first step, not after its end)
    mid = sum(1 for n in progress if 0 < n < KILL_CHAIN_STEPS)
    assert mid >= KILLS // 2, progress
    print(f"{KILLS} kills, {len(finished) + 1} chains of {KILL_CHAIN_STEPS} steps: {progress}")
