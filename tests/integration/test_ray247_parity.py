"""Behaviours that follow Ray Workflows 2.47 (issue 11), on a real local Ray.

Each test states what a program written for 2.47 relies on and checks that ``workflows``
does the same. Steps count their runs in files under ``tmp_path``; waits are bounded.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import pytest
import ray

import workflows as workflow
from tests.integration import engine_helpers as h
from workflows import WorkflowNotFoundError, WorkflowStatus
from workflows import api as wf_api

# -- init(): the two limits --------------------------------------------------------------


@pytest.mark.parametrize("bad", [1.7, "2", [1]])
def test_init_limits_must_be_integers(wf_storage: Path, bad: object) -> None:
    with pytest.raises(TypeError, match="max_running_workflows"):
        workflow.init(storage=wf_storage, max_running_workflows=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_pending_workflows"):
        workflow.init(storage=wf_storage, max_pending_workflows=bad)  # type: ignore[arg-type]


def test_init_limits_out_of_range_are_value_errors(wf_storage: Path) -> None:
    for running in (0, -2):
        with pytest.raises(ValueError, match="max_running_workflows"):
            workflow.init(storage=wf_storage, max_running_workflows=running)
    with pytest.raises(ValueError, match="max_pending_workflows"):
        workflow.init(storage=wf_storage, max_pending_workflows=-2)


def test_init_again_with_other_limits_raises_and_none_keeps_them(wf_storage: Path) -> None:
    # the fixture started the engine without limits
    with pytest.raises(ValueError, match="do not match the original ones"):
        workflow.init(storage=wf_storage, max_running_workflows=2)
    workflow.init(storage=wf_storage, max_running_workflows=-1, max_pending_workflows=-1)
    workflow.shutdown()  # the limits hold until the engine ends
    workflow.init(storage=wf_storage, max_running_workflows=2, max_pending_workflows=3)
    engine = wf_api._Runtime.engine
    workflow.init(storage=wf_storage)  # None keeps both: the same engine goes on
    workflow.init(storage=wf_storage, max_running_workflows=2)
    assert wf_api._Runtime.engine is engine
    assert (engine.max_running, engine.max_pending) == (2, 3)
    with pytest.raises(ValueError, match="max_pending_workflows=3"):
        workflow.init(storage=wf_storage, max_pending_workflows=-1)
    assert wf_api._Runtime.engine is engine


# -- queue.Full --------------------------------------------------------------------------


def test_a_full_pending_queue_raises_ray_workflows_message(
    wf_storage: Path, tmp_path: Path
) -> None:
    workflow.shutdown()
    workflow.init(storage=wf_storage, max_running_workflows=1, max_pending_workflows=1)
    started, release = tmp_path / "started", tmp_path / "release"
    first = workflow.run_async(h.wait_for_file.bind(str(release), 1, str(started)), workflow_id="a")
    h.wait_until(started.exists, what="the first workflow to start")
    second = workflow.run_async(h.identity.bind(2), workflow_id="b")
    assert workflow.get_status("b") is WorkflowStatus.PENDING
    with pytest.raises(queue.Full, match=r"^Workflow queue has been full"):
        workflow.run(h.identity.bind(3), workflow_id="c")
    h.touch(release)
    assert ray.get([first, second], timeout=60) == [1, 2]


# -- workflow.options as a decorator -----------------------------------------------------


@workflow.options(task_id="named", metadata={"owner": "ops"})
@ray.remote
def named_step(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative {x}")
    return x * 10


def test_options_decorates_a_remote_function(wf_storage: Path) -> None:
    assert workflow.run(named_step.bind(4), workflow_id="deco") == 40
    meta = workflow.get_metadata("deco", "named")
    assert meta["user_metadata"] == {"owner": "ops"}
    assert meta["task_options"]["task_id"] == "named"
    assert workflow.get_output("deco", task_id="named") == 40


def test_options_after_the_decorator_override_it_key_by_key(wf_storage: Path) -> None:
    caught = named_step.options(**workflow.options(catch_exceptions=True))
    result, error = workflow.run(caught.bind(-1), workflow_id="deco-caught")
    assert result is None and isinstance(error, ValueError)
    meta = workflow.get_metadata("deco-caught", "named")  # the decorator's id and metadata
    assert meta["user_metadata"] == {"owner": "ops"}
    assert meta["task_options"]["catch_exceptions"] is True
    renamed = named_step.options(num_cpus=1, **workflow.options(task_id="renamed"))
    assert workflow.run(renamed.bind(1), workflow_id="deco-renamed") == 10
    assert workflow.get_metadata("deco-renamed", "renamed")["user_metadata"] == {"owner": "ops"}
    # Ray options alone keep every workflow option of the decorator
    assert workflow.run(named_step.options(num_cpus=1).bind(2), workflow_id="deco-ray") == 20
    assert workflow.get_output("deco-ray", task_id="named") == 20


def test_options_decorates_only_remote_functions() -> None:
    def plain() -> None:
        return None

    with pytest.raises(ValueError, match="Ray remote functions"):
        workflow.options(task_id="x")(plain)
    with pytest.raises(ValueError, match="invalid workflow option"):
        workflow.options(name="x")
    assert dict(**workflow.options(checkpoint=False)).keys() == {"_labels"}


# -- get_metadata: unknown ids -----------------------------------------------------------


def test_get_metadata_of_unknown_ids_raises_value_errors(wf_storage: Path) -> None:
    with pytest.raises(ValueError, match=r"^No such workflow_id ghost$") as unknown:
        workflow.get_metadata("ghost")
    assert isinstance(unknown.value, WorkflowNotFoundError)
    assert workflow.run(h.identity.bind(1), workflow_id="known") == 1
    with pytest.raises(ValueError, match=r"^No such task_id missing in workflow known$"):
        workflow.get_metadata("known", "missing")
    with pytest.raises(ValueError):  # as 2.47's get_output
        workflow.get_output("ghost")
    with pytest.raises(WorkflowNotFoundError):
        workflow.get_status("ghost")


# -- get_metadata: start and end times ---------------------------------------------------


@ray.remote
def hands_over(x: int) -> Any:
    return workflow.continuation(h.identity.bind(x))


def test_a_step_that_continued_has_an_end_time(wf_storage: Path) -> None:
    before = time.time()
    assert workflow.run(hands_over.bind(5), workflow_id="handover") == 5
    stats = workflow.get_metadata("handover", f"{__name__}.hands_over")["stats"]
    assert before <= stats["start_time"] <= stats["end_time"]
    assert stats["end_time"] <= workflow.get_metadata("handover")["stats"]["end_time"]


def test_end_time_only_once_a_workflow_ended_by_itself(wf_storage: Path, tmp_path: Path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    workflow.run_async(h.wait_for_file.bind(str(release), 1, str(started)), workflow_id="slow")
    h.wait_until(started.exists, what="the step to start")
    running = workflow.get_metadata("slow")
    assert running["status"] == "RUNNING"
    assert set(running["stats"]) == {"start_time"}
    workflow.cancel("slow")
    canceled = workflow.get_metadata("slow")
    assert canceled["status"] == "CANCELED"
    assert set(canceled["stats"]) == {"start_time"}

    flag, runs = tmp_path / "flag", tmp_path / "runs"
    with pytest.raises(ValueError):
        workflow.run(h.fail_unless_flag.bind(str(flag), str(runs), 7), workflow_id="flaky")
    failed = workflow.get_metadata("flaky")
    assert failed["status"] == "FAILED"
    assert failed["stats"]["start_time"] <= failed["stats"]["end_time"]


def test_a_resumed_workflow_starts_its_time_again(wf_storage: Path, tmp_path: Path) -> None:
    flag, runs = tmp_path / "flag", tmp_path / "runs"
    with pytest.raises(ValueError):
        workflow.run(h.fail_unless_flag.bind(str(flag), str(runs), 7), workflow_id="again")
    first = workflow.get_metadata("again")["stats"]
    h.touch(flag)
    assert workflow.resume("again") == 7
    second = workflow.get_metadata("again")["stats"]
    assert first["end_time"] <= second["start_time"] <= second["end_time"]
    assert h.count_lines(runs) == 2


def test_a_pending_workflow_has_no_start_time_until_it_runs(
    wf_storage: Path, tmp_path: Path
) -> None:
    workflow.shutdown()
    workflow.init(storage=wf_storage, max_running_workflows=1)
    started, release = tmp_path / "started", tmp_path / "release"
    first = workflow.run_async(h.wait_for_file.bind(str(release), 1, str(started)), workflow_id="a")
    h.wait_until(started.exists, what="the first workflow to start")
    second = workflow.run_async(h.identity.bind(2), workflow_id="b")
    assert workflow.get_metadata("b") == {"status": "PENDING", "user_metadata": {}, "stats": {}}
    released_at = time.time()
    h.touch(release)
    assert ray.get([first, second], timeout=60) == [1, 2]
    assert released_at <= workflow.get_metadata("b")["stats"]["start_time"]


# -- catch_exceptions up the chain of continuations --------------------------------------


@ray.remote
def raises(text: str) -> None:
    raise ValueError(text)


@ray.remote
def pair(a: Any, b: Any) -> tuple[Any, Any]:
    return (a, b)


@ray.remote
def fails_inside(fail: bool) -> Any:
    # the error comes from a step that is not the continuation's output step
    feeder = raises.bind("inner") if fail else h.identity.bind(10)
    return workflow.continuation(h.identity.bind(feeder))


@ray.remote
def two_levels(fail: bool) -> Any:
    # the middle step explicitly does not catch: the one above it does
    middle = fails_inside.options(**workflow.options(catch_exceptions=False))
    return workflow.continuation(middle.bind(fail))


@ray.remote
def fails_beside_a_blocked_step(release: str, started: str) -> Any:
    return workflow.continuation(
        pair.bind(h.wait_for_file.bind(release, 1, started), raises.bind("beside"))
    )


def test_the_step_that_returned_the_continuation_catches_an_inner_error(
    wf_storage: Path,
) -> None:
    catching = fails_inside.options(**workflow.options(catch_exceptions=True))
    result, error = workflow.run(catching.bind(True), workflow_id="inner")
    assert result is None
    assert type(error) is ValueError and error.args == ("inner",)
    assert workflow.get_status("inner") is WorkflowStatus.SUCCESSFUL
    assert workflow.run(catching.bind(False), workflow_id="inner-ok") == (10, None)
    # stored: a second run of the id returns the caught error without running anything
    again = workflow.run(catching.bind(False), workflow_id="inner")
    assert again[0] is None and type(again[1]) is ValueError


def test_the_nearest_catching_step_up_the_chain_catches(wf_storage: Path) -> None:
    catching = two_levels.options(**workflow.options(catch_exceptions=True))
    result, error = workflow.run(catching.bind(True), workflow_id="two-up")
    assert result is None and type(error) is ValueError
    # a success is wrapped only along output steps that catch (here the middle one does
    # not), as in Ray Workflows
    assert workflow.run(catching.bind(False), workflow_id="two-up-ok") == 10
    with pytest.raises(ValueError, match="inner"):  # no step up the chain catches
        workflow.run(two_levels.bind(True), workflow_id="two-up-uncaught")
    assert workflow.get_status("two-up-uncaught") is WorkflowStatus.FAILED


def test_a_caught_error_does_not_wait_for_the_rest_of_the_continuation(
    wf_storage: Path, tmp_path: Path
) -> None:
    release, started = tmp_path / "release", tmp_path / "started"
    catching = fails_beside_a_blocked_step.options(**workflow.options(catch_exceptions=True))
    ref = workflow.run_async(catching.bind(str(release), str(started)), workflow_id="beside")
    # the blocked step would wait 60 s for its file, which never appears
    result, error = ray.get(ref, timeout=30)
    assert result is None and error.args == ("beside",)


# -- ray.shutdown() ends the engine ------------------------------------------------------


def test_ray_shutdown_hands_workflows_back_and_a_new_ray_init_resumes_them(
    wf_storage: Path, tmp_path: Path, ray_address: str
) -> None:
    """A driver (of its own: this process keeps the session's Ray) shuts Ray down under a
    running workflow, then connects again. As in Ray Workflows, the workflow is RESUMABLE
    (to this process too, before the driver reconnects), resume_all() resumes it, and
    get_output_async works on the new Ray."""
    release, runs, go_on = tmp_path / "release", tmp_path / "runs", tmp_path / "go_on"
    driver = h.Driver(
        "ray_restart",
        wf_storage,
        ray_address,
        str(release),
        str(runs),
        str(go_on),
        out=tmp_path / "drv.out",
    )
    try:
        assert driver.wait_event("ray_down")["initialized"] is False
        # the dead engine handed it back within a heartbeat: no live owner any more
        h.wait_until(
            lambda: workflow.get_status(h.VICTIM_ID) is WorkflowStatus.RESUMABLE,
            timeout_s=15,
            what="the workflow to become resumable",
        )
        h.touch(go_on)
        assert driver.wait_event("ray_up")["statuses"] == {h.VICTIM_ID: "RESUMABLE"}
        assert driver.wait_event("resumed")["ids"] == [h.VICTIM_ID]
        done = driver.wait_event("done", timeout_s=90)
        assert done["result"] == {h.VICTIM_ID: 2, "get_output_async": 2}
        assert driver.wait(60) == 0
    finally:
        driver.kill()
    assert workflow.get_status(h.VICTIM_ID) is WorkflowStatus.SUCCESSFUL
    assert h.count_lines(runs) == 2  # the step that died with the old Ray ran again
