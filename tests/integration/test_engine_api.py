"""The Ray-Workflows-compatible API (``import workflows as workflow``) on a real local Ray.

Each test gets a fresh journal (the ``wf_storage`` fixture). Steps count their executions
by appending lines to files under ``tmp_path``; waits are bounded polls, never sleeps.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import queue
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
from ray.dag import InputNode

import workflows as workflow
from tests.integration import engine_helpers as h
from tests.integration import harness as h_cluster
from workflows import (
    WorkflowCancellationError,
    WorkflowExecutionError,
    WorkflowNotFoundError,
    WorkflowNotResumableError,
    WorkflowStatus,
    WorkflowStillActiveError,
)
from workflows import api as wf_api

MODULE = __name__


# -- steps ----------------------------------------------------------------------------------


@ray.remote
def add(a: int, b: int) -> int:
    return a + b


@ray.remote
def inc(x: int) -> int:
    return x + 1


@ray.remote
def triple(a: Any, b: Any, c: Any) -> tuple[Any, Any, Any]:
    return (a, b, c)


@ray.remote
def always_fails(runs: str) -> None:
    h.append_line(runs, "run")
    raise ValueError("boom")


@ray.remote
def fails_if(fail: bool) -> int:
    if fail:
        raise ValueError("boom")
    return 1


@ray.remote
def dies_once(flag: str, runs: str) -> str:
    """Kills its worker on the first attempt (a system failure, not an exception)."""
    h.append_line(runs, "run")
    if not os.path.exists(flag):
        h.touch(flag)
        os._exit(1)
    return "survived"


@ray.remote
def cancellable(started: str, go: str, done: str, interrupted: str) -> str:
    try:
        h.append_line(started, str(os.getpid()))  # in the try: an interrupt can land once written
        for _ in range(1200):  # at most ~60 s
            if os.path.exists(go):
                break
            time.sleep(0.05)
    except KeyboardInterrupt:  # how ray.cancel(force=False) stops a running task
        h.touch(interrupted)
        raise
    h.touch(done)
    return "finished"


@ray.remote
def fib(n: int) -> Any:
    if n <= 1:
        return n
    return workflow.continuation(add.bind(fib.bind(n - 1), fib.bind(n - 2)))


@ray.remote
def loop(i: int, n: int, acc: list[int]) -> Any:
    if i == n:
        return acc
    return workflow.continuation(loop.bind(i + 1, n, [*acc, i]))


@ray.remote
def inner(x: int) -> int:
    return x * 10


@ray.remote
def middle(x: int) -> Any:
    return workflow.continuation(inner.bind(x + 1))


@ray.remote
def outer(x: int) -> Any:
    return workflow.continuation(middle.bind(x + 1))


@ray.remote
def continues_into(fail: bool) -> Any:
    return workflow.continuation(fails_if.bind(fail))


@ray.remote
def continues_into_uncaught(fail: bool) -> Any:
    uncaught = fails_if.options(**workflow.options(catch_exceptions=False))
    return workflow.continuation(uncaught.bind(fail))


@ray.remote
def continues_into_identity(value: Any) -> Any:
    return workflow.continuation(h.identity.bind(value))


@ray.remote
def square(i: int) -> int:
    return i * i


@ray.remote
def make_refs(runs: str) -> list[ray.ObjectRef]:
    h.append_line(runs, "run")
    return [square.remote(i) for i in range(3)]


@ray.remote
def sum_refs(refs: list[ray.ObjectRef], flag: str | None = None) -> int:
    if flag is not None and not os.path.exists(flag):
        raise ValueError("flag missing")
    return sum(ray.get(refs))


@ray.remote
def big_bytes(n: int) -> bytes:
    return bytes(range(256)) * (n // 256)


@ray.remote
def digest(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


@workflow.step
def l_add(a: int, b: int) -> int:
    return a + b


@workflow.step
def l_countdown(n: int, acc: int) -> Any:
    if n == 0:
        return acc
    return l_countdown.step(n - 1, acc + n)


@workflow.step(catch_exceptions=True, max_retries=2)
def l_fails(runs: str) -> None:
    h.append_line(runs, "run")
    raise ValueError("legacy boom")


def _started(path: Path) -> bool:
    return path.exists()


# -- run ------------------------------------------------------------------------------------


def test_run_returns_the_output(wf_storage: Path) -> None:
    assert workflow.run(add.bind(add.bind(1, 2), 10), workflow_id="sum") == 13
    assert workflow.get_status("sum") is WorkflowStatus.SUCCESSFUL


def test_run_feeds_the_input_node(wf_storage: Path) -> None:
    with InputNode() as whole:
        single = add.bind(whole, 1)
    assert workflow.run(single, 41) == 42

    with InputNode() as inp:
        several = triple.bind(inp[0], inp[1], inp.x)
    assert workflow.run(several, "a", "b", x="c") == ("a", "b", "c")


def test_run_async_returns_an_object_ref(wf_storage: Path) -> None:
    ref = workflow.run_async(add.bind(20, 22), workflow_id="async")
    assert isinstance(ref, ray.ObjectRef)
    assert ray.get(ref, timeout=60) == 42


def test_default_workflow_id_is_a_uuid_and_a_timestamp(wf_storage: Path) -> None:
    before = time.time()
    assert workflow.run(add.bind(1, 1)) == 2
    after = time.time()
    [(wid, status)] = workflow.list_all()
    assert status is WorkflowStatus.SUCCESSFUL
    head, _, stamp = wid.partition(".")
    assert uuid.UUID(head).version == 4
    assert before - 1 <= float(stamp) <= after + 1


def test_metadata_must_be_json_serialisable(wf_storage: Path) -> None:
    with pytest.raises(ValueError):
        workflow.run(add.bind(1, 1), workflow_id="m", metadata={"bad": object()})
    with pytest.raises(ValueError):
        workflow.run_async(add.bind(1, 1), workflow_id="m", metadata={"bad": {1, 2}})
    assert workflow.list_all() == []


def test_workflow_id_must_be_a_str(wf_storage: Path) -> None:
    with pytest.raises(TypeError):
        workflow.run(add.bind(1, 1), workflow_id=123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        workflow.get_status(123)  # type: ignore[arg-type]
    assert workflow.list_all() == []


def test_run_with_an_existing_id_resumes_and_executes_nothing(
    wf_storage: Path, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.runs", tmp_path / "second.runs"
    assert workflow.run(h.counted.bind(str(first), "one"), workflow_id="same") == "one"
    assert workflow.run(h.counted.bind(str(second), "two"), workflow_id="same") == "one"
    assert ray.get(workflow.run_async(h.counted.bind(str(second), "two"), workflow_id="same")) == (
        "one"
    )
    assert h.count_lines(first) == 1
    assert not second.exists()


def test_run_or_resume_of_a_running_id_raises_runtime_error(
    wf_storage: Path, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    ref = workflow.run_async(h.wait_for_file.bind(str(release), "v"), workflow_id="busy")
    with pytest.raises(RuntimeError):
        workflow.run(add.bind(1, 1), workflow_id="busy")
    with pytest.raises(RuntimeError):
        workflow.resume("busy")
    h.touch(release)
    assert ray.get(ref, timeout=60) == "v"


def test_a_step_whose_readers_hold_its_ref_leaves_no_copy_of_its_output_in_the_driver(
    wf_storage: Path, tmp_path: Path
) -> None:
    # a pipelined chain: every reader is submitted with its parent's ObjectRef at once, so
    # once a parent's output is committed nothing reads it through the engine any more
    release = tmp_path / "release"
    payload = "x" * 10_000
    s1 = h.identity.options(**workflow.options(task_id="s1")).bind(payload)
    s2 = h.identity.options(**workflow.options(task_id="s2")).bind(s1)
    s3 = h.identity.options(**workflow.options(task_id="s3")).bind(s2)
    last = h.wait_for_file.options(**workflow.options(task_id="last")).bind(str(release), s3)
    ref = workflow.run_async(last, workflow_id="copies")
    engine = wf_api._engine()

    def held() -> dict[str, tuple[str, bool]]:
        run = engine._runs["copies"]
        return {tid: (t.state, t.has_value) for tid, t in run.tasks.items()}

    deadline = time.monotonic() + 60
    while any(engine.call(held)[tid][0] != "DONE" for tid in ("s1", "s2", "s3")):
        assert time.monotonic() < deadline, engine.call(held)
        time.sleep(0.01)
    assert engine.call(held) == {
        "s1": ("DONE", False),
        "s2": ("DONE", False),
        "s3": ("DONE", False),
        "last": ("RUNNING", False),
    }
    # the journal has them
    assert workflow.get_output("copies", task_id="s2") == payload
    h.touch(release)
    assert ray.get(ref, timeout=60) == payload


def test_resume_of_an_unknown_id_is_not_resumable(wf_storage: Path) -> None:
    with pytest.raises(WorkflowNotResumableError):
        workflow.resume("never-ran")


# -- status, listing, metadata ----------------------------------------------------------------


def test_status_successful_and_failed(wf_storage: Path, tmp_path: Path) -> None:
    workflow.run(add.bind(1, 1), workflow_id="good")
    with pytest.raises(ValueError):
        workflow.run(always_fails.bind(str(tmp_path / "runs")), workflow_id="bad")
    assert workflow.get_status("good") is WorkflowStatus.SUCCESSFUL
    assert workflow.get_status("bad") is WorkflowStatus.FAILED
    with pytest.raises(WorkflowNotFoundError):
        workflow.get_status("nope")


def test_status_running_then_canceled(wf_storage: Path, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    workflow.run_async(h.wait_for_file.bind(str(release), "v", str(started)), workflow_id="live")
    h.wait_until(lambda: _started(started), what="the step to start")
    assert workflow.get_status("live") is WorkflowStatus.RUNNING
    workflow.cancel("live")
    assert workflow.get_status("live") is WorkflowStatus.CANCELED


def test_status_resumable_after_the_engine_stopped(wf_storage: Path, tmp_path: Path) -> None:
    from workflows.engine.outputs import stored_status
    from workflows.engine.storage import Storage

    runs, release = tmp_path / "runs", tmp_path / "release"
    waiting = h.in_thread(
        workflow.run, h.wait_for_file.bind(str(release), "v", str(runs)), workflow_id="r"
    )
    h.wait_until(lambda: h.count_lines(runs) == 1, what="the step to start")
    wf_api.shutdown()  # the engine stops while the workflow runs
    with pytest.raises(workflow.WorkflowError, match="shut down"):
        waiting.result(timeout=10)  # its caller is told, not left waiting
    # ... and hands the workflow back: any process may resume it now, not only after
    # this one exits
    journal = Storage(wf_storage)
    try:
        row = journal.get_workflow("r")
    finally:
        journal.close()
    assert row is not None and row.status == "RUNNING" and row.owner is None
    assert stored_status(row, "another-host/1/1.000") is WorkflowStatus.RESUMABLE
    workflow.init(storage=wf_storage)
    assert workflow.get_status("r") is WorkflowStatus.RESUMABLE
    assert workflow.list_all() == [("r", WorkflowStatus.RESUMABLE)]
    h.touch(release)
    assert workflow.resume("r") == "v"
    assert workflow.get_status("r") is WorkflowStatus.SUCCESSFUL


def test_shutdown_stops_running_steps_and_answers_late_calls(
    wf_storage: Path, tmp_path: Path
) -> None:
    started, go, done, interrupted = (tmp_path / n for n in ("started", "go", "done", "intr"))
    dag = cancellable.bind(str(started), str(go), str(done), str(interrupted))
    waiting = h.in_thread(workflow.run, dag, workflow_id="stopped")
    h.wait_until(lambda: _started(started), what="the step to start")
    worker = psutil.Process(int(h.read_lines(started)[0]))
    engine = wf_api._engine()
    wf_api.shutdown()
    # the step is stopped (whoever resumes the workflow runs it again), not left running:
    # interrupted, or its worker killed once the polite cancel's grace is over (on a busy
    # machine the interrupt may not land within it)
    h.wait_until(
        lambda: interrupted.exists() or not h.process_running(worker),
        timeout_s=20,
        what="the step to be interrupted or its worker killed",
    )
    assert not done.exists()
    with pytest.raises(workflow.WorkflowError, match="shut down"):
        waiting.result(timeout=10)
    # a call that reaches the stopped engine fails instead of waiting forever
    late = h.in_thread(engine.call, lambda: 1)
    with pytest.raises(workflow.WorkflowError, match="shut down"):
        late.result(timeout=5)


def test_list_all_filters_by_status_string_or_set(wf_storage: Path, tmp_path: Path) -> None:
    workflow.run(add.bind(1, 1), workflow_id="ok")
    with pytest.raises(ValueError):
        workflow.run(always_fails.bind(str(tmp_path / "runs")), workflow_id="ko")
    ok, ko = ("ok", WorkflowStatus.SUCCESSFUL), ("ko", WorkflowStatus.FAILED)
    assert sorted(workflow.list_all()) == sorted([ok, ko])
    assert workflow.list_all(WorkflowStatus.SUCCESSFUL) == [ok]
    assert workflow.list_all("FAILED") == [ko]
    assert sorted(workflow.list_all({WorkflowStatus.SUCCESSFUL, "FAILED"})) == sorted([ok, ko])
    assert workflow.list_all({WorkflowStatus.RUNNING}) == []


def test_get_metadata_of_workflow_and_task(wf_storage: Path) -> None:
    before = time.time()
    dag = add.options(**workflow.options(task_id="t", metadata={"k": "v"})).bind(1, 2)
    assert workflow.run(dag, workflow_id="md", metadata={"owner": "me"}) == 3
    after = time.time()

    meta = workflow.get_metadata("md")
    assert set(meta) == {"status", "user_metadata", "stats"}
    assert meta["status"] == "SUCCESSFUL"
    assert meta["user_metadata"] == {"owner": "me"}
    assert set(meta["stats"]) == {"start_time", "end_time"}
    assert before <= meta["stats"]["start_time"] <= meta["stats"]["end_time"] <= after

    task = workflow.get_metadata("md", "t")
    assert set(task) == {"task_id", "task_options", "user_metadata", "stats"}
    assert task["task_id"] == "t"
    assert task["user_metadata"] == {"k": "v"}
    assert task["task_options"]["catch_exceptions"] is False
    assert task["task_options"]["checkpoint"] is True
    assert set(task["stats"]) == {"start_time", "end_time"}
    assert before <= task["stats"]["start_time"] <= task["stats"]["end_time"] <= after

    assert workflow.get_output("md", task_id="t") == 3
    with pytest.raises(WorkflowNotFoundError):
        workflow.get_metadata("nope")


def test_options_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError):
        workflow.options(bad=1)
    assert workflow.options(task_id="x") != {}


def test_default_task_ids_are_module_qualname_with_suffixes(wf_storage: Path) -> None:
    assert workflow.run(inc.bind(inc.bind(inc.bind(0))), workflow_id="ids") == 3
    base = f"{MODULE}.inc"
    assert workflow.get_output("ids", task_id=base) == 1
    assert workflow.get_output("ids", task_id=f"{base}_1") == 2
    assert workflow.get_output("ids", task_id=f"{base}_2") == 3
    with pytest.raises(ValueError):
        workflow.get_output("ids", task_id=f"{base}_3")


def test_get_output_waits_for_a_running_workflow(wf_storage: Path, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    first = h.wait_for_file.options(**workflow.options(task_id="first")).bind(
        str(release), 5, str(started)
    )
    workflow.run_async(
        add.options(**workflow.options(task_id="last")).bind(first, 1), workflow_id="w"
    )
    h.wait_until(lambda: _started(started), what="the first step to start")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        whole = pool.submit(workflow.get_output, "w")
        last = pool.submit(workflow.get_output, "w", task_id="last")  # not started yet
        with pytest.raises(concurrent.futures.TimeoutError):
            whole.result(timeout=0.3)
        assert not last.done()
        h.touch(release)
        assert whole.result(timeout=60) == 6
        assert last.result(timeout=60) == 6
    assert workflow.get_output("w", task_id="first") == 5


def test_get_output_async_of_a_running_workflow_resolves(wf_storage: Path, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    workflow.run_async(h.wait_for_file.bind(str(release), 7, str(started)), workflow_id="ga")
    h.wait_until(lambda: _started(started), what="the step to start")
    ref = workflow.get_output_async("ga")
    h.touch(release)
    assert ray.get(ref, timeout=3) == 7


# -- continuation ---------------------------------------------------------------------------


def test_continuation_fib(wf_storage: Path) -> None:
    assert workflow.run(fib.bind(10), workflow_id="fib") == 55


def test_continuation_loop(wf_storage: Path) -> None:
    assert workflow.run(loop.bind(0, 5, []), workflow_id="loop") == [0, 1, 2, 3, 4]


def test_nested_continuation_feeds_a_dependent_step(wf_storage: Path) -> None:
    assert workflow.run(add.bind(outer.bind(1), 5), workflow_id="nest") == 35
    assert workflow.get_output("nest", task_id=f"{MODULE}.outer") == 30


def test_continuation_outside_a_workflow_just_executes(ray_cluster: None) -> None:
    assert workflow.continuation(add.bind(1, 2)) == 3


# -- failures and retries -------------------------------------------------------------------


def test_catch_exceptions(wf_storage: Path) -> None:
    catching = fails_if.options(**workflow.options(catch_exceptions=True))
    assert workflow.run(catching.bind(False), workflow_id="fine") == (1, None)
    result, error = workflow.run(catching.bind(True), workflow_id="caught")
    assert result is None
    assert type(error) is ValueError
    assert error.args == ("boom",)
    assert workflow.get_status("caught") is WorkflowStatus.SUCCESSFUL


def test_catch_exceptions_passes_down_to_the_direct_continuation(wf_storage: Path) -> None:
    catching = continues_into.options(**workflow.options(catch_exceptions=True))
    assert workflow.run(catching.bind(False), workflow_id="cont-ok") == (1, None)
    result, error = workflow.run(catching.bind(True), workflow_id="cont-caught")
    assert result is None
    assert type(error) is ValueError


def test_an_explicit_catch_exceptions_false_in_the_continuation_defers_to_its_creator(
    wf_storage: Path,
) -> None:
    # the failing step does not catch, but the step that returned it does (Ray Workflows
    # looks up the chain of continuations for the nearest step that catches)
    catching = continues_into_uncaught.options(**workflow.options(catch_exceptions=True))
    result, error = workflow.run(catching.bind(True), workflow_id="cont-uncaught")
    assert result is None
    assert type(error) is ValueError
    with pytest.raises(ValueError, match="boom"):  # nothing up the chain catches
        workflow.run(continues_into_uncaught.bind(True), workflow_id="cont-uncaught-2")


def test_a_continuation_inherits_checkpoint_false(wf_storage: Path) -> None:
    unsaved = continues_into_identity.options(
        **workflow.options(checkpoint=False, task_id="parent")
    )
    assert workflow.run(h.add.bind(unsaved.bind(41), 1), workflow_id="inherit-ckpt") == 42
    tasks = {t.task_id: t for t in wf_api._storage().list_tasks("inherit-ckpt")}
    assert tasks["parent"].status == "CONTINUED"
    inner = f"{h.__name__}.identity"  # the continuation's step: inherited, not journaled
    assert inner not in tasks or not tasks[inner].has_output
    with pytest.raises(ValueError):
        workflow.get_output("inherit-ckpt", task_id=inner)


def test_an_unsaved_step_whose_readers_committed_is_not_rerun_on_resume(
    wf_storage: Path, tmp_path: Path
) -> None:
    log, flag, runs = tmp_path / "log", tmp_path / "flag", tmp_path / "runs"
    unsaved = h.logged_step.options(**workflow.options(checkpoint=False, task_id="unsaved"))
    reader = h.logged_step.options(**workflow.options(task_id="reader"))
    dag = h.fail_unless_flag.bind(
        str(flag), str(runs), reader.bind(unsaved.bind(0, 0, str(log)), 1, str(log))
    )
    with pytest.raises(ValueError):
        workflow.run(dag, workflow_id="unsaved")
    assert h.index_counts(log) == {0: 1, 1: 1}
    h.touch(flag)
    assert workflow.resume("unsaved") == 2
    assert h.index_counts(log) == {0: 1, 1: 1}  # "reader" committed: "unsaved" not needed
    assert h.count_lines(runs) == 2


def test_application_errors_are_not_retried_by_default(wf_storage: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(ValueError):
        workflow.run(always_fails.bind(str(runs)), workflow_id="once")
    assert h.count_lines(runs) == 1


def test_retry_exceptions_runs_one_plus_max_retries_times(wf_storage: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    step = always_fails.options(max_retries=2, retry_exceptions=True)
    with pytest.raises(ValueError):
        workflow.run(step.bind(str(runs)), workflow_id="thrice")
    assert h.count_lines(runs) == 3


def test_max_retries_zero_runs_once(wf_storage: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    step = always_fails.options(max_retries=0, retry_exceptions=True)
    with pytest.raises(ValueError):
        workflow.run(step.bind(str(runs)), workflow_id="zero")
    assert h.count_lines(runs) == 1


def test_a_dead_worker_is_retried(wf_storage: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    dag = dies_once.bind(str(tmp_path / "died"), str(runs))
    assert workflow.run(dag, workflow_id="phoenix") == "survived"
    assert h.count_lines(runs) == 2


def test_failure_raises_workflow_execution_error_of_the_original_type(
    wf_storage: Path, tmp_path: Path
) -> None:
    with pytest.raises(WorkflowExecutionError) as caught:
        workflow.run(always_fails.bind(str(tmp_path / "runs")), workflow_id="dual")
    assert isinstance(caught.value, ValueError)
    assert "boom" in str(caught.value)
    assert workflow.get_status("dual") is WorkflowStatus.FAILED


def test_resume_of_a_failed_workflow_reruns_only_what_failed(
    wf_storage: Path, tmp_path: Path
) -> None:
    first_runs, second_runs, flag = tmp_path / "first", tmp_path / "second", tmp_path / "flag"
    dag = h.fail_unless_flag.bind(str(flag), str(second_runs), h.counted.bind(str(first_runs), 7))
    with pytest.raises(ValueError):
        workflow.run(dag, workflow_id="fix")
    assert workflow.get_status("fix") is WorkflowStatus.FAILED
    h.touch(flag)
    assert workflow.resume("fix") == 7
    assert workflow.get_status("fix") is WorkflowStatus.SUCCESSFUL
    assert h.count_lines(first_runs) == 1
    assert h.count_lines(second_runs) == 2


def test_resume_async_after_a_failed_run_async_returns_the_new_result(
    wf_storage: Path, tmp_path: Path
) -> None:
    runs, flag = tmp_path / "runs", tmp_path / "flag"
    dag = h.fail_unless_flag.bind(str(flag), str(runs), "ok")
    ref = workflow.run_async(dag, workflow_id="again")
    with pytest.raises(ValueError):
        ray.get(ref, timeout=60)
    h.touch(flag)
    assert ray.get(workflow.resume_async("again"), timeout=60) == "ok"


# -- cancel and delete ----------------------------------------------------------------------


def test_cancel_stops_the_running_step(wf_storage: Path, tmp_path: Path) -> None:
    started, go, done, interrupted = (tmp_path / n for n in ("started", "go", "done", "intr"))
    dag = cancellable.bind(str(started), str(go), str(done), str(interrupted))
    ref = workflow.run_async(dag, workflow_id="stop")
    worker = psutil.Process(int(h.wait_until(lambda: h.read_lines(started), what="the start")[0]))
    workflow.cancel("stop")
    assert workflow.get_status("stop") is WorkflowStatus.CANCELED
    with pytest.raises(WorkflowCancellationError):
        ray.get(ref, timeout=60)
    # Ray stops the task with KeyboardInterrupt (the step notes it) or, if that does not
    # land within the grace period, by killing its worker: one of the two must happen
    h.wait_until(
        lambda: interrupted.exists() or not h.process_running(worker),
        timeout_s=10,
        what="the step to be interrupted or its worker killed",
    )
    h.touch(go)  # a step still looping would finish at once now
    assert h.stays_false(done.exists, 1.0)
    assert h.count_lines(started) == 1  # not started again either


def test_delete(wf_storage: Path, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    ref = workflow.run_async(h.wait_for_file.bind(str(release), "v", str(started)), workflow_id="d")
    h.wait_until(lambda: _started(started), what="the step to start")
    with pytest.raises(WorkflowStillActiveError):
        workflow.delete("d")
    h.touch(release)
    assert ray.get(ref, timeout=60) == "v"

    workflow.delete("d")
    with pytest.raises(WorkflowNotFoundError):
        workflow.get_status("d")
    assert workflow.list_all() == []
    assert workflow.run(add.bind(2, 3), workflow_id="d") == 5  # the id can be reused
    with pytest.raises(WorkflowNotFoundError):
        workflow.delete("never-was")


def test_run_async_of_a_reused_id_returns_the_new_result(wf_storage: Path) -> None:
    assert ray.get(workflow.run_async(add.bind(1, 1), workflow_id="re"), timeout=60) == 2
    workflow.delete("re")
    assert ray.get(workflow.run_async(add.bind(3, 4), workflow_id="re"), timeout=60) == 7


def test_shutdown_releases_the_results_actor(wf_storage: Path, tmp_path: Path) -> None:
    def results_actors() -> set[str]:
        names = ray.util.list_named_actors(all_namespaces=True)
        return {n["name"] for n in names if n["name"].startswith("hivemesh-workflow-results-")}

    before = results_actors()
    release = tmp_path / "release"
    ref = workflow.run_async(h.wait_for_file.bind(str(release), 1), workflow_id="act")
    h.touch(release)
    assert ray.get(ref, timeout=60) == 1
    mine = results_actors() - before
    assert len(mine) == 1
    wf_api.shutdown()
    h.wait_until(lambda: not (results_actors() & mine), timeout_s=2, what="the actor to go")


# -- sleep and events -----------------------------------------------------------------------


def test_sleep_takes_at_least_its_duration(wf_storage: Path) -> None:
    started = time.monotonic()
    assert workflow.run(workflow.sleep(0.5), workflow_id="nap") is None  # like Ray's
    assert time.monotonic() - started >= 0.5


def test_cancel_drops_the_timer_of_a_durable_sleep(wf_storage: Path) -> None:
    engine = wf_api._engine()
    timers = lambda: engine.call(lambda: len(engine._timers))  # noqa: E731
    before = timers()
    ref = workflow.run_async(h.identity.bind(workflow.sleep(3600)), workflow_id="long-nap")
    h.wait_until(lambda: timers() == before + 1, timeout_s=10, what="the sleep's timer")
    workflow.cancel("long-nap")
    with pytest.raises(workflow.WorkflowCancellationError):
        ray.get(ref, timeout=30)
    assert workflow.get_status("long-nap") is WorkflowStatus.CANCELED
    assert timers() == before  # not left in the heap for an hour, holding the run


def test_wait_for_event(wf_storage: Path, tmp_path: Path) -> None:
    event, ack = tmp_path / "event", tmp_path / "ack"
    dag = h.identity.bind(workflow.wait_for_event(h.FileEventListener, str(event), str(ack)))
    ref = workflow.run_async(dag, workflow_id="evt")
    assert workflow.get_status("evt") is WorkflowStatus.RUNNING
    assert not ack.exists()
    h.write_atomically(event, "hello")
    assert ray.get(ref, timeout=60) == "hello"
    assert ack.read_text() == "hello"  # event_checkpointed ran before the next step


def test_wait_for_event_needs_an_event_listener_class() -> None:
    with pytest.raises(TypeError):
        workflow.wait_for_event(int)
    with pytest.raises(TypeError):
        workflow.wait_for_event(h.FileEventListener())  # type: ignore[arg-type]


# -- values ---------------------------------------------------------------------------------


def test_object_refs_in_outputs_survive_a_restart(wf_storage: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    refs = make_refs.options(**workflow.options(task_id="refs")).bind(str(runs))
    assert workflow.run(sum_refs.bind(refs), workflow_id="objs") == 5
    wf_api.shutdown()
    workflow.init(storage=wf_storage)
    out = workflow.get_output("objs", task_id="refs")
    assert [type(r) for r in out] == [ray.ObjectRef] * 3
    assert ray.get(out) == [0, 1, 4]
    assert workflow.get_output("objs") == 5
    assert h.count_lines(runs) == 1


def test_object_refs_in_outputs_are_restored_on_resume(wf_storage: Path, tmp_path: Path) -> None:
    runs, flag = tmp_path / "runs", tmp_path / "flag"
    dag = sum_refs.bind(make_refs.bind(str(runs)), str(flag))
    with pytest.raises(ValueError):
        workflow.run(dag, workflow_id="objs2")
    wf_api.shutdown()
    workflow.init(storage=wf_storage)
    h.touch(flag)
    assert workflow.resume("objs2") == 5
    assert h.count_lines(runs) == 1


def test_a_50mb_intermediate_is_a_blob(wf_storage: Path) -> None:
    size = 50 * 1024 * 1024
    data = bytes(range(256)) * (size // 256)
    dag = digest.bind(big_bytes.options(**workflow.options(task_id="big")).bind(size))
    assert workflow.run(dag, workflow_id="big") == (size, hashlib.sha256(data).hexdigest())
    blobs = [p for p in (wf_storage / "objects").rglob("*") if p.is_file() and p.name[0] != "."]
    assert len(blobs) == 1
    assert blobs[0].stat().st_size >= size
    assert blobs[0].parent.name == blobs[0].name[:2]
    assert workflow.get_output("big", task_id="big") == data
    workflow.delete("big")
    assert not blobs[0].exists()  # delete removes the stored outputs


def test_a_2000_step_static_chain_needs_no_recursion_limit(wf_storage: Path) -> None:
    limit = sys.getrecursionlimit()
    node = inc.bind(0)
    for _ in range(1999):
        node = inc.bind(node)
    assert workflow.run(node, workflow_id="long") == 2000
    assert sys.getrecursionlimit() == limit


# -- legacy step API ------------------------------------------------------------------------


def test_legacy_step_api(wf_storage: Path) -> None:
    out = l_add.step(l_add.step(1, 2), 3)
    assert out.run(workflow_id="legacy") == 6
    assert workflow.get_output("legacy", task_id=f"{MODULE}.l_add") == 3
    assert ray.get(l_add.step(2, 3).run_async(workflow_id="legacy-async"), timeout=60) == 5
    assert l_countdown.step(4, 0).run(workflow_id="legacy-dynamic") == 10
    assert l_add(1, 1) == 2  # still callable as a plain function


def test_legacy_catch_exceptions(wf_storage: Path, tmp_path: Path) -> None:
    result, error = l_fails.step(str(tmp_path / "runs")).run(workflow_id="legacy-catch")
    assert result is None
    assert type(error) is ValueError
    assert error.args == ("legacy boom",)


def test_legacy_max_retries_retries_application_errors(wf_storage: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    l_fails.step(str(runs)).run(workflow_id="legacy-retry")
    assert h.count_lines(runs) == 2


# -- admission limits -----------------------------------------------------------------------


def test_max_running_and_pending_workflows(wf_storage: Path, tmp_path: Path) -> None:
    workflow.shutdown()  # the limits hold until the engine ends
    workflow.init(storage=wf_storage, max_running_workflows=1, max_pending_workflows=1)
    started, release, order = tmp_path / "started", tmp_path / "release", tmp_path / "order"
    first = workflow.run_async(
        h.wait_for_file.bind(str(release), "a", str(started)), workflow_id="a"
    )
    h.wait_until(lambda: _started(started), what="the first workflow to start")
    second = workflow.run_async(h.record.bind(str(order), "b"), workflow_id="b")
    assert workflow.get_status("a") is WorkflowStatus.RUNNING
    assert workflow.get_status("b") is WorkflowStatus.PENDING
    assert workflow.list_all(WorkflowStatus.PENDING) == [("b", WorkflowStatus.PENDING)]
    with pytest.raises(queue.Full):
        workflow.run_async(h.record.bind(str(order), "c"), workflow_id="c")
    assert not order.exists()
    h.touch(release)
    assert ray.get(first, timeout=60) == "a"
    assert ray.get(second, timeout=60) == "b"
    assert workflow.get_status("b") is WorkflowStatus.SUCCESSFUL


def test_pending_workflows_run_in_fifo_order(wf_storage: Path, tmp_path: Path) -> None:
    workflow.shutdown()  # the limits hold until the engine ends
    workflow.init(storage=wf_storage, max_running_workflows=1, max_pending_workflows=3)
    started, release, order = tmp_path / "started", tmp_path / "release", tmp_path / "order"
    workflow.run_async(h.wait_for_file.bind(str(release), "a", str(started)), workflow_id="a")
    h.wait_until(lambda: _started(started), what="the first workflow to start")
    refs = [
        workflow.run_async(h.record.bind(str(order), name), workflow_id=name)
        for name in ("b", "c", "d")
    ]
    assert [workflow.get_status(n) for n in "bcd"] == [WorkflowStatus.PENDING] * 3
    h.touch(release)
    assert ray.get(refs, timeout=60) == ["b", "c", "d"]
    assert h.read_lines(order) == ["b", "c", "d"]


# -- recovery across processes --------------------------------------------------------------


def test_resume_all_after_the_driver_was_killed(
    wf_storage: Path, tmp_path: Path, ray_address: str
) -> None:
    release, runs, flag = tmp_path / "release", tmp_path / "runs", tmp_path / "flag"
    driver = h.Driver(
        "blocked", wf_storage, ray_address, str(release), str(runs), out=tmp_path / "drv.out"
    )
    try:
        driver.wait_event("ready")
        h.wait_until(lambda: h.count_lines(runs) >= 1, what="the driver's step to start")
    finally:
        driver.kill()

    failed_runs = tmp_path / "failed.runs"
    with pytest.raises(ValueError):
        workflow.run(h.fail_unless_flag.bind(str(flag), str(failed_runs), 9), workflow_id="broken")

    assert workflow.get_status(h.VICTIM_ID) is WorkflowStatus.RESUMABLE
    resumed = workflow.resume_all()
    assert [wid for wid, _ in resumed] == [h.VICTIM_ID]
    h.touch(release)
    assert ray.get(resumed[0][1], timeout=60) == 2

    h.touch(flag)
    resumed = workflow.resume_all(include_failed=True)
    assert [wid for wid, _ in resumed] == ["broken"]
    assert ray.get(resumed[0][1], timeout=60) == 9
    assert h.count_lines(failed_runs) == 2


def test_get_output_of_a_task_waits_for_a_workflow_another_process_runs(
    wf_storage: Path, tmp_path: Path, ray_address: str
) -> None:
    with h.blocked_driver(wf_storage, ray_address, tmp_path) as (driver, release):
        pool = concurrent.futures.ThreadPoolExecutor(2)
        blocked = pool.submit(
            workflow.get_output, h.VICTIM_ID, task_id=f"{h.__name__}.wait_for_file"
        )
        not_run_yet = pool.submit(workflow.get_output, h.VICTIM_ID, task_id=f"{h.__name__}.add")
        assert h.stays_false(blocked.done, 1.0)  # committed by nobody yet: it waits
        h.touch(release)
        assert blocked.result(timeout=30) == 1
        assert not_run_yet.result(timeout=30) == 2
        assert driver.wait_event("done")["result"] == 2
        with pytest.raises(ValueError):  # a task the finished workflow does not have
            workflow.get_output(h.VICTIM_ID, task_id="no-such-task")


def test_delete_and_cancel_of_a_workflow_another_process_runs(
    wf_storage: Path, tmp_path: Path, ray_address: str
) -> None:
    with h.blocked_driver(wf_storage, ray_address, tmp_path) as (driver, _):
        with pytest.raises(workflow.WorkflowStillActiveError):
            workflow.delete(h.VICTIM_ID)
        assert workflow.get_status(h.VICTIM_ID) is WorkflowStatus.RUNNING
        never_run = h.in_thread(workflow.get_output, h.VICTIM_ID, task_id=f"{h.__name__}.add")
        assert h.stays_false(never_run.done, 0.5)  # waits for the other process
        workflow.cancel(h.VICTIM_ID)  # through the journal: the owner sees it at its heartbeat
        assert workflow.get_status(h.VICTIM_ID) is WorkflowStatus.CANCELED
        # the task will never run: the wait ends with the workflow's fate, as in-process
        with pytest.raises(workflow.WorkflowCancellationError):
            never_run.result(timeout=30)
        assert driver.proc.wait(timeout=30) != 0  # its run() raised WorkflowCancellationError
        assert driver.event("done") is None
        workflow.delete(h.VICTIM_ID)  # no longer active
        with pytest.raises(workflow.WorkflowNotFoundError):
            workflow.get_status(h.VICTIM_ID)


def test_a_durable_sleep_survives_a_driver_kill(
    wf_storage: Path, tmp_path: Path, ray_address: str
) -> None:
    from workflows.engine.storage import Storage

    def timer_end() -> float | None:
        journal = Storage(wf_storage)
        try:
            ends = [t.timer_end for t in journal.list_tasks(h.SLEEPER_ID) if t.timer_end]
        finally:
            journal.close()
        return ends[0] if ends else None

    driver = h.Driver("sleep", wf_storage, ray_address, out=tmp_path / "drv.out")
    try:
        driver.wait_event("ready")
        end = h.wait_until(timer_end, what="the timer to be recorded")
        # another live process owns it: RUNNING here, and not resumable from here
        assert workflow.get_status(h.SLEEPER_ID) is WorkflowStatus.RUNNING
        with pytest.raises(RuntimeError):
            workflow.resume(h.SLEEPER_ID)
        # let most of the 3 s elapse under the first driver, then kill it
        h.wait_until(lambda: time.time() >= end - 1.0, timeout_s=h.SLEEP_S + 1)
        assert driver.event("done") is None
    finally:
        driver.kill()

    resume_started = time.time()
    assert workflow.resume(h.SLEEPER_ID) is None
    finished = time.time()
    assert timer_end() == end  # not re-recorded by the resume
    assert finished >= end  # the timer was honoured ...
    # ... from its recorded end: about 1 s was left; a restarted timer would take 3 s
    assert finished - resume_started < h.SLEEP_S - 0.5


# -- cluster mode ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_driver_on_a_separately_started_cluster(ray_cluster: None, tmp_path: Path) -> None:
    """``ray start --head`` (its own temp dir and process group), then a driver that
    connects by address. Only the head's processes are killed at the end."""
    with h_cluster.ray_head(h.driver_env()) as head:
        storage = tmp_path / "cluster-storage"
        driver = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.integration.engine_helpers",
                "small",
                str(storage),
                head.address,
                "on-cluster",
            ],
            cwd=h.REPO_ROOT,
            env=head.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert driver.returncode == 0, driver.stdout[-2000:] + driver.stderr[-2000:]
        events = [line for line in driver.stdout.splitlines() if line.startswith("{")]
        assert '"result": 42' in events[-1]
        assert '"status": "SUCCESSFUL"' in events[-2]
        assert f'"gcs": "{head.address}"' in events[0]
