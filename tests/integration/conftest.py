"""Fixtures of the workflow-engine tests: a fresh journal per test on the session's Ray."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def wf_storage(ray_cluster: None, tmp_path: Path) -> Iterator[Path]:
    """``workflows.init(storage=...)`` on a fresh folder; afterwards, stop what still runs
    (so a test's leftover step cannot hold a CPU of the shared Ray) and shut down."""
    import workflows
    from workflows import api

    path = tmp_path / "storage"
    workflows.init(storage=path)
    try:
        yield path
    finally:
        if api.is_initialized():
            for wid, _ in workflows.list_all({"RUNNING", "PENDING"}):
                with contextlib.suppress(workflows.WorkflowError):
                    workflows.cancel(wid)
        api.shutdown()


@pytest.fixture
def ray_address(ray_cluster: None) -> str:
    """The GCS address of the session's Ray (subprocess drivers connect to it)."""
    import ray

    return str(ray.get_runtime_context().gcs_address)
