"""Behaviours that follow Ray Workflows 2.47 (issue 11), on a real local Ray.

Each test states what a program written for 2.47 relies on and checks that ``workflows``
does the same. Steps count their runs in files under ``tmp_path``; waits are bounded.
"""

from __future__ import annotations

import queue
from pathlib import Path

import pytest
import ray

import workflows as workflow
from tests.integration import engine_helpers as h
from workflows import WorkflowStatus

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
