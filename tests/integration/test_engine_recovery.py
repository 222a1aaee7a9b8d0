"""Recovery and control paths of the workflow engine that need real processes: cancel of a
step blocked in C code, cancel and delete of PENDING workflows, dead workers and
``max_retries``, ObjectRef outputs / continuations / events across a SIGKILL of a real
driver, the journal's SQLite settings, ``checkpoint=False``, resume of a finished
workflow, and ObjectRefs through the legacy step API.

Steps count their executions by appending lines to files under ``tmp_path``; waits are
bounded polls, never sleeps.
"""

from __future__ import annotations

import concurrent.futures
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

import workflows as workflow
from tests.integration import engine_helpers as h
from workflows import (
    WorkflowCancellationError,
    WorkflowExecutionError,
    WorkflowStatus,
    WorkflowStillActiveError,
)
from workflows import api as wf_api
from workflows.engine.storage import Storage

MODULE = __name__
EVENT_TASK = "workflow.wait_for_event"


# -- steps ----------------------------------------------------------------------------------


@ray.remote
def sleeps_in_c(started: str, done: str) -> str:
    """Notes its worker's pid, then blocks in one C call (no bytecode boundary to interrupt)."""
    h.append_line(started, str(os.getpid()))
    time.sleep(60)
    h.touch(done)
    return "finished"


@ray.remote
def dies_on_first_runs(runs: str, deaths: int) -> str:
    """Kills its own worker (a system failure, not an exception) on its first ``deaths`` runs."""
    h.append_line(runs, "run")
    if h.count_lines(runs) <= deaths:
        os._exit(1)
    return "survived"


@workflow.step
def l_put_refs(runs: str) -> list[ray.ObjectRef]:
    h.append_line(runs, "run")
    return [ray.put(i * 10) for i in range(3)]


@workflow.step
def l_sum_refs(refs: list[ray.ObjectRef]) -> int:
    return sum(ray.get(refs))


@workflow.step(max_retries=1)  # Ray 1.x semantics: one attempt in all
def l_sum_refs_if_flag(refs: list[ray.ObjectRef], flag: str, runs: str) -> int:
    h.append_line(runs, "run")
    if not os.path.exists(flag):
        raise ValueError("flag missing")
    return sum(ray.get(refs))


# -- helpers --------------------------------------------------------------------------------


def _committed(wid: str) -> set[str]:
    """The tasks of ``wid`` whose result is in the journal (read through this process's
    storage: it sees what other processes committed)."""
    return {
        t.task_id
        for t in wf_api._storage().list_tasks(wid)
        if (t.status == "SUCCESSFUL" and t.has_output) or t.status == "CONTINUED"
    }


def _fib_steps(n: int) -> tuple[int, int]:
    """(fib steps, add steps) that ``fib(n)`` by continuation runs."""
    if n <= 1:
        return 1, 0
    (f1, a1), (f2, a2) = _fib_steps(n - 1), _fib_steps(n - 2)
    return 1 + f1 + f2, 1 + a1 + a2


@pytest.fixture
def one_at_a_time(wf_storage: Path) -> Iterator[Path]:
    """The engine started again with ``max_running_workflows=1`` (the limits hold until
    the engine ends, as in Ray Workflows)."""
    workflow.shutdown()  # the limits hold until the engine ends
    workflow.init(storage=wf_storage, max_running_workflows=1, max_pending_workflows=4)
    yield wf_storage


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_kills_a_step_blocked_in_c_code(wf_storage: Path, tmp_path: Path) -> None:
    """A polite ``ray.cancel`` cannot interrupt ``time.sleep(60)``; cancel escalates to a
    forced cancel after its grace period, which kills the step's worker."""
    started, done = tmp_path / "started", tmp_path / "done"
    ref = workflow.run_async(sleeps_in_c.bind(str(started), str(done)), workflow_id="c-sleep")
    pid = int(h.wait_until(lambda: h.read_lines(started), what="the step to start")[0])
    worker = psutil.Process(pid)
    assert h.process_running(worker)

    canceled_at = time.monotonic()
    workflow.cancel("c-sleep")
    assert workflow.get_status("c-sleep") is WorkflowStatus.CANCELED
    with pytest.raises(WorkflowCancellationError):
        ray.get(ref, timeout=15)
    h.wait_until(lambda: not h.process_running(worker), timeout_s=15, what="the worker to die")
    assert time.monotonic() - canceled_at < 15
    assert h.stays_false(done.exists, 0.5)  # its process is gone: it can never finish
    assert h.count_lines(started) == 1  # and cancel did not rerun it
    assert workflow.get_status("c-sleep") is WorkflowStatus.CANCELED


def test_cancel_of_a_pending_workflow_means_it_never_runs(
    one_at_a_time: Path, tmp_path: Path
) -> None:
    started, release, order = tmp_path / "started", tmp_path / "release", tmp_path / "order"
    first = workflow.run_async(
        h.wait_for_file.bind(str(release), "a", str(started)), workflow_id="a"
    )
    h.wait_until(started.exists, what="the first workflow to start")
    second = workflow.run_async(h.record.bind(str(order), "b"), workflow_id="b")
    assert workflow.get_status("b") is WorkflowStatus.PENDING

    workflow.cancel("b")
    assert workflow.get_status("b") is WorkflowStatus.CANCELED
    assert workflow.list_all(WorkflowStatus.PENDING) == []
    with pytest.raises(WorkflowCancellationError):
        ray.get(second, timeout=15)

    h.touch(release)  # the running slot frees up: "b" must not be taken from the queue
    assert ray.get(first, timeout=30) == "a"
    assert workflow.run(h.record.bind(str(order), "c"), workflow_id="c") == "c"  # slot is free
    assert h.read_lines(order) == ["c"]
    assert workflow.get_status("b") is WorkflowStatus.CANCELED


def test_delete_refuses_a_pending_workflow(one_at_a_time: Path, tmp_path: Path) -> None:
    started, release, order = tmp_path / "started", tmp_path / "release", tmp_path / "order"
    first = workflow.run_async(
        h.wait_for_file.bind(str(release), "a", str(started)), workflow_id="a"
    )
    h.wait_until(started.exists, what="the first workflow to start")
    second = workflow.run_async(h.record.bind(str(order), "b"), workflow_id="b")
    assert workflow.get_status("b") is WorkflowStatus.PENDING

    with pytest.raises(WorkflowStillActiveError):
        workflow.delete("b")
    assert workflow.get_status("b") is WorkflowStatus.PENDING  # untouched: still queued
    h.touch(release)
    assert ray.get([first, second], timeout=30) == ["a", "b"]
    assert h.read_lines(order) == ["b"]
    workflow.delete("b")  # once it ended, it can be deleted


# -- dead workers and max_retries -----------------------------------------------------------


def test_a_dead_worker_with_max_retries_0_fails_the_workflow(
    wf_storage: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    step = dies_on_first_runs.options(max_retries=0)
    with pytest.raises(WorkflowExecutionError) as caught:
        workflow.run(step.bind(str(runs), 1), workflow_id="no-retry")
    assert isinstance(caught.value, ray.exceptions.WorkerCrashedError)
    assert h.count_lines(runs) == 1
    assert workflow.get_status("no-retry") is WorkflowStatus.FAILED


def test_catch_exceptions_does_not_catch_a_dead_worker(wf_storage: Path, tmp_path: Path) -> None:
    """Only application errors are caught (RAY_WORKFLOWS_NOTES.md); a worker death is a
    system error: with its retries used up it fails the workflow."""
    runs = tmp_path / "runs"
    step = dies_on_first_runs.options(max_retries=0, **workflow.options(catch_exceptions=True))
    with pytest.raises(WorkflowExecutionError) as caught:
        workflow.run(step.bind(str(runs), 1), workflow_id="no-catch")
    assert isinstance(caught.value, ray.exceptions.WorkerCrashedError)
    assert h.count_lines(runs) == 1
    assert workflow.get_status("no-catch") is WorkflowStatus.FAILED


def test_default_max_retries_is_3_for_dead_workers(wf_storage: Path, tmp_path: Path) -> None:
    survives, dies = tmp_path / "survives", tmp_path / "dies"
    three: Any = dies_on_first_runs.options(**workflow.options(task_id="t")).bind(str(survives), 3)
    four: Any = dies_on_first_runs.bind(str(dies), 4)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # side by side: 2 CPUs
        ok = pool.submit(workflow.run, three, workflow_id="three-deaths")
        failed = pool.submit(workflow.run, four, workflow_id="four-deaths")
        # three deaths: the 4th run (the 3rd retry) succeeds
        assert ok.result(timeout=60) == "survived"
        # four deaths: 1 + 3 runs, all of them die
        with pytest.raises(WorkflowExecutionError) as caught:
            failed.result(timeout=60)
    assert isinstance(caught.value, ray.exceptions.WorkerCrashedError)
    assert h.count_lines(survives) == 4
    assert h.count_lines(dies) == 4
    assert workflow.get_metadata("three-deaths", "t")["task_options"]["max_retries"] == 3
    assert workflow.get_status("four-deaths") is WorkflowStatus.FAILED


def test_run_async_of_a_workflow_failed_by_a_dead_worker_resolves(
    wf_storage: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    ref = workflow.run_async(
        dies_on_first_runs.options(max_retries=0).bind(str(runs), 1), workflow_id="async-dead"
    )
    h.wait_until(
        lambda: workflow.get_status("async-dead") is WorkflowStatus.FAILED,
        timeout_s=30,
        what="the workflow to fail",
    )
    with pytest.raises(WorkflowExecutionError) as caught:
        ray.get(ref, timeout=5)  # the result is known: it only has to be handed over
    assert isinstance(caught.value, ray.exceptions.WorkerCrashedError)


# -- recovery after a SIGKILL of the driver -------------------------------------------------


def test_object_ref_outputs_are_restored_after_a_driver_kill(
    wf_storage: Path, tmp_path: Path, ray_address: str
) -> None:
    release, put_runs, get_runs = tmp_path / "release", tmp_path / "put.runs", tmp_path / "get"
    driver = h.Driver(
        "refs",
        wf_storage,
        ray_address,
        str(release),
        str(put_runs),
        str(get_runs),
        out=tmp_path / "drv.out",
    )
    try:
        driver.wait_event("ready")
        # the reader is submitted only after the refs' values were committed
        h.wait_until(lambda: h.count_lines(get_runs) >= 1, what="the reading step to start")
    finally:
        driver.kill()
    assert driver.event("done") is None
    assert _committed(h.REFS_ID) == {"put"}

    h.touch(release)
    expected = [[h.REF_BYTES, i] for i in range(h.REF_COUNT)]
    assert workflow.resume(h.REFS_ID) == expected  # the reader ray.get the restored refs
    assert h.count_lines(put_runs) == 1  # the refs were not made again
    assert h.count_lines(get_runs) == 2
    restored = workflow.get_output(h.REFS_ID, task_id="put")
    assert [type(r) for r in restored] == [ray.ObjectRef] * h.REF_COUNT
    assert [(len(v), v[0]) for v in ray.get(restored, timeout=30)] == [
        (h.REF_BYTES, i) for i in range(h.REF_COUNT)
    ]


def test_sigkill_in_a_continuation_recursion_reruns_no_committed_step(
    wf_storage: Path, tmp_path: Path, ray_address: str
) -> None:
    log, flag = tmp_path / "fib.log", tmp_path / "flag"
    fibs, adds = _fib_steps(h.FIB_N)
    # what cannot finish while the fib(2) at FIB_BLOCK_AT waits: its own subtree (it, its
    # two fib steps and its add) and the add of each of its ancestors
    depth = h.FIB_BLOCK_AT.count(".")
    committable = fibs + adds - sum(_fib_steps(h.FIB_N - depth)) - depth

    def runs() -> dict[str, list[str]]:  # task id -> the recursion paths logged for it
        found: dict[str, list[str]] = {}
        for line in h.read_lines(log):
            path, tid = line.split(" ")
            found.setdefault(tid, []).append(path)
        return found

    def blocked_and_settled() -> bool:
        blocked = any(h.FIB_BLOCK_AT in paths for paths in runs().values())
        return blocked and len(_committed(h.FIB_ID)) == committable

    driver = h.Driver("fib", wf_storage, ray_address, str(log), str(flag), out=tmp_path / "d.out")
    try:
        driver.wait_event("ready")
        h.wait_until(blocked_and_settled, what="everything but the blocked branch to commit")
    finally:
        driver.kill()
    assert driver.event("done") is None

    before = runs()
    committed = _committed(h.FIB_ID)
    [blocked] = [t for t, paths in before.items() if h.FIB_BLOCK_AT in paths]
    assert len(committed) == committable  # the kill interrupted a deep, settled recursion
    assert set(before) - committed == {blocked}  # only the blocked step ran uncommitted

    h.touch(flag)
    assert workflow.resume(h.FIB_ID) == h.fib_value(h.FIB_N)
    after = runs()
    assert len(after) == fibs + adds  # every step of the recursion ran ...
    assert sum(1 for paths in after.values() if paths[0] != "add") == fibs
    assert {t: len(after[t]) for t in committed if len(after[t]) != 1} == {}  # ... once,
    assert after[blocked] == [h.FIB_BLOCK_AT] * 2  # except the one in flight at the kill
    assert {t for t, paths in after.items() if len(paths) > 1} == {blocked}


def _event_files(tmp: Path) -> tuple[Path, Path, Path, Path, Path]:
    """The event driver's files: event, ack, polls, release, runs."""
    return tmp / "event", tmp / "ack", tmp / "polls", tmp / "release", tmp / "runs"


def _event_driver(storage: Path, address: str, workflow_id: str, tmp: Path) -> h.Driver:
    """A driver running ``h.event_then_file`` as ``workflow_id`` on ``_event_files(tmp)``."""
    files = (str(p) for p in _event_files(tmp))
    return h.Driver("event", storage, address, workflow_id, *files, out=tmp / "drv.out")


def test_a_committed_event_is_not_polled_again_after_a_driver_kill(
    wf_storage: Path, tmp_path: Path, ray_address: str
) -> None:
    event, ack, polls, release, runs = _event_files(tmp_path)
    h.write_atomically(event, "first")
    driver = _event_driver(wf_storage, ray_address, "evt-done", tmp_path)
    try:
        driver.wait_event("ready")
        # the next step starts only after the event was committed and acknowledged
        h.wait_until(lambda: h.count_lines(runs) >= 1, what="the step after the event")
    finally:
        driver.kill()
    assert _committed("evt-done") == {EVENT_TASK}
    assert h.read_lines(ack) == ["first"]

    h.write_atomically(event, "second")  # what a second poll would return
    h.touch(release)
    assert workflow.resume("evt-done") == "first"
    assert h.count_lines(polls) == 1
    assert h.read_lines(ack) == ["first"]  # not acknowledged again either
    assert h.count_lines(runs) == 2


def test_an_uncommitted_event_is_polled_again_after_a_driver_kill(
    wf_storage: Path, tmp_path: Path, ray_address: str
) -> None:
    event, ack, polls, release, runs = _event_files(tmp_path)
    driver = _event_driver(wf_storage, ray_address, "evt-waiting", tmp_path)
    try:
        driver.wait_event("ready")
        h.wait_until(lambda: h.count_lines(polls) >= 1, what="the listener to poll")
    finally:
        driver.kill()
    assert EVENT_TASK not in _committed("evt-waiting")
    assert workflow.get_status("evt-waiting") is WorkflowStatus.RESUMABLE

    h.touch(release)
    ref = workflow.resume_async("evt-waiting")
    h.wait_until(lambda: h.count_lines(polls) == 2, timeout_s=15, what="a second poll")
    assert not ack.exists()
    h.write_atomically(event, "late")
    assert ray.get(ref, timeout=30) == "late"
    assert h.read_lines(ack) == ["late"]
    assert h.count_lines(polls) == 2
    assert h.count_lines(runs) == 1  # the step after the event never ran before the kill


# -- journal settings -----------------------------------------------------------------------


def _pragma(storage: Storage, name: str) -> Any:
    """A pragma as the journal's write connection sees it (synchronous is per connection)."""
    return storage.transact(lambda db: db.execute(f"PRAGMA {name}").fetchone()[0])


def test_the_journal_is_wal_with_synchronous_full_by_default(wf_storage: Path) -> None:
    assert workflow.run(h.add.bind(1, 2), workflow_id="j") == 3
    storage = wf_api._storage()
    assert storage.root == wf_storage
    assert _pragma(storage, "synchronous") == 2  # FULL
    assert _pragma(storage, "journal_mode") == "wal"
    with sqlite3.connect(wf_storage / "workflows.db") as db:  # WAL is stored in the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_init_with_synchronous_normal_and_a_file_url(wf_storage: Path, tmp_path: Path) -> None:
    other = tmp_path / "normal"
    workflow.init(storage="file://" + str(other), synchronous="NORMAL")
    storage = wf_api._storage()
    assert storage.root == other
    assert _pragma(storage, "synchronous") == 1  # NORMAL
    assert _pragma(storage, "journal_mode") == "wal"
    assert workflow.run(h.add.bind(2, 3), workflow_id="n") == 5
    assert (other / "workflows.db").is_file()
    with sqlite3.connect(other / "workflows.db") as db:
        assert db.execute("SELECT status FROM wf WHERE workflow_id = 'n'").fetchone() == (
            "SUCCESSFUL",
        )
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    with pytest.raises(ValueError):
        workflow.init(storage=other, synchronous="OFF")


# -- checkpoint=False and resume of a finished workflow -------------------------------------


def test_checkpoint_false_output_is_not_journaled(wf_storage: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    unsaved = h.counted.options(**workflow.options(task_id="unsaved", checkpoint=False))
    dag: Any = h.add.options(**workflow.options(task_id="sum")).bind(unsaved.bind(str(runs), 41), 1)
    assert workflow.run(dag, workflow_id="nockpt") == 42
    assert workflow.get_status("nockpt") is WorkflowStatus.SUCCESSFUL
    assert workflow.get_output("nockpt") == 42
    assert workflow.get_output("nockpt", task_id="sum") == 42
    with pytest.raises(ValueError):
        workflow.get_output("nockpt", task_id="unsaved")
    assert "unsaved" not in _committed("nockpt")
    assert h.count_lines(runs) == 1


def test_checkpoint_false_step_runs_again_on_resume(wf_storage: Path, tmp_path: Path) -> None:
    unsaved_runs, reader_runs, flag = tmp_path / "unsaved", tmp_path / "reader", tmp_path / "flag"
    unsaved = h.counted.options(**workflow.options(task_id="unsaved", checkpoint=False))
    dag: Any = h.fail_unless_flag.bind(
        str(flag), str(reader_runs), unsaved.bind(str(unsaved_runs), 7)
    )
    with pytest.raises(ValueError):
        workflow.run(dag, workflow_id="rerun")
    with pytest.raises(ValueError):
        workflow.get_output("rerun", task_id="unsaved")
    h.touch(flag)
    assert workflow.resume("rerun") == 7
    # its reader had not committed, so its value was needed and not in the journal
    assert h.count_lines(unsaved_runs) == 2
    assert h.count_lines(reader_runs) == 2


def test_resume_of_a_successful_workflow_runs_nothing(wf_storage: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    first = h.counted.options(**workflow.options(task_id="first"))
    dag: Any = h.counted.bind(str(runs), first.bind(str(runs), "v"))
    assert workflow.run(dag, workflow_id="done") == "v"
    assert h.count_lines(runs) == 2
    assert workflow.resume("done") == "v"
    assert ray.get(workflow.resume_async("done"), timeout=30) == "v"
    wf_api.shutdown()  # a fresh engine: the output comes from the journal
    workflow.init(storage=wf_storage)
    assert workflow.resume("done") == "v"
    assert workflow.get_status("done") is WorkflowStatus.SUCCESSFUL
    assert h.count_lines(runs) == 2


# -- legacy step API ------------------------------------------------------------------------


def test_legacy_steps_pass_a_list_of_object_refs(wf_storage: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert l_sum_refs.step(l_put_refs.step(str(runs))).run(workflow_id="l-refs") == 30
    refs = workflow.get_output("l-refs", task_id=f"{MODULE}.l_put_refs")
    assert [type(r) for r in refs] == [ray.ObjectRef] * 3
    assert ray.get(refs, timeout=30) == [0, 10, 20]
    assert h.count_lines(runs) == 1


def test_legacy_object_refs_are_restored_on_resume(wf_storage: Path, tmp_path: Path) -> None:
    runs, reader_runs, flag = tmp_path / "runs", tmp_path / "reader", tmp_path / "flag"
    out = l_sum_refs_if_flag.step(l_put_refs.step(str(runs)), str(flag), str(reader_runs))
    with pytest.raises(ValueError):
        out.run(workflow_id="l-refs-resume")
    assert h.count_lines(reader_runs) == 1
    wf_api.shutdown()  # the refs the first step made are no longer held by this engine
    workflow.init(storage=wf_storage)
    h.touch(flag)
    assert workflow.resume("l-refs-resume") == 30
    assert h.count_lines(runs) == 1
    assert h.count_lines(reader_runs) == 2
