"""What a step may produce, on a real Ray: the engine fails a step whose checkpointed output
is over ``max_step_output_bytes`` without journaling it, and cuts long error texts; the
node's tool runner fails a tool whose output is over the limit in the Ray worker, so the
output never reaches the node's process."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
import trio

import workflows as workflow
from workflows import api as wf_api
from workflows.engine.limits import StepLimits
from workflows.errors import StepOutputTooLargeError, ToolExecutionError
from workflows.ray_tools import RayToolRunner


@ray.remote
def big(size: int) -> bytes:
    return b"x" * size


@ray.remote
def shouts(size: int) -> None:
    raise ValueError("!" * size)


def _blobs(storage: Path) -> list[Path]:
    return [p for p in (storage / "objects").rglob("*") if p.is_file()]


def _task_rows(storage: Path, wid: str) -> list[tuple[str, str, int, str | None]]:
    db = sqlite3.connect(f"file:{storage / 'workflows.db'}?mode=ro", uri=True)
    try:
        return list(
            db.execute(
                "SELECT task_id, status, length(output) IS NOT NULL OR output_hash IS NOT NULL,"
                " error_text FROM task WHERE workflow_id = ?",
                (wid,),
            )
        )
    finally:
        db.close()


@pytest.fixture
def limited(ray_cluster: None, tmp_path: Path) -> Iterator[Path]:
    storage = tmp_path / "storage"
    workflow.init(storage=storage, max_step_output_bytes=100_000)
    yield storage
    wf_api.shutdown()


def test_an_output_over_the_limit_fails_the_step_and_is_not_journaled(limited: Path) -> None:
    assert len(workflow.run(big.bind(80_000), workflow_id="fits")) == 80_000
    with pytest.raises(StepOutputTooLargeError) as caught:
        workflow.run(big.bind(1_000_000), workflow_id="too-big")
    err = caught.value
    assert isinstance(err, workflow.WorkflowExecutionError)
    assert "over the limit of 100000 bytes (max_step_output_bytes)" in str(err)
    assert err.cause is not None and err.cause.size > 1_000_000  # type: ignore[attr-defined]
    assert workflow.get_status("too-big") is workflow.WorkflowStatus.FAILED
    ((_, status, has_output, error),) = _task_rows(limited, "too-big")
    assert (status, has_output) == ("FAILED", 0)
    assert error is not None and "max_step_output_bytes" in error
    # the one blob is the 80 kB output that fit (it is above the inline size)
    assert len(_blobs(limited)) == 1


def test_a_long_error_is_cut_with_a_marker(limited: Path) -> None:
    with pytest.raises(ValueError) as caught:
        workflow.run(shouts.bind(400_000), workflow_id="loud")
    text = str(caught.value)
    assert len(text) < 4096 + 200  # the message: "workflow 'loud' failed: " + 4096 at most
    assert "[…" in text and "cut to the max_error_chars of 4096" in text
    ((_, status, _, error),) = _task_rows(limited, "loud")
    assert status == "FAILED" and error is not None and len(error) <= 4096
    # read back from the journal: the 400 kB exception was too big to keep, its text stands
    wf_api.shutdown()
    workflow.init(storage=limited, max_step_output_bytes=100_000)
    with pytest.raises(workflow.WorkflowExecutionError) as again:
        workflow.get_output("loud")
    assert len(str(again.value)) < 4096 + 200


def test_the_tool_runner_fails_a_large_output_in_the_worker(ray_cluster: None) -> None:
    runner = RayToolRunner(limits=StepLimits(max_output_bytes=10_000))

    async def run(size: int) -> dict[str, object]:
        return await runner("util.fill", None, {"size": size})

    assert trio.run(run, 9_000) == {"result": "x" * 9_000}
    with pytest.raises(StepOutputTooLargeError) as caught:
        trio.run(run, 5_000_000)
    assert str(caught.value) == (
        "the output of tool 'util.fill' is 5000013 bytes, over the limit of 10000 bytes "
        "(max_step_output_bytes): return less, or raise the limit"
    )
    # without limits the output comes back whole
    unlimited = functools.partial(RayToolRunner(), "util.fill", None, {"size": 20_000})
    assert trio.run(unlimited) == {"result": "x" * 20_000}


def test_the_tool_runner_cuts_a_long_tool_error(ray_cluster: None) -> None:
    runner = RayToolRunner(limits=StepLimits(max_error_chars=300))
    with pytest.raises(ToolExecutionError) as caught:
        trio.run(runner, "util.fill", None, {"size": 1, "char": "ab" * 100_000})
    assert len(caught.value.message) <= 300
    assert "cut to the max_error_chars of 300" in caught.value.message
