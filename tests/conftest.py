"""Shared fixtures. Ray is started at most once per test session."""

from __future__ import annotations

import os

# Before anything imports Ray: every local Ray in the tests stays on 127.0.0.1.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A real local Ray for the whole session, bound to loopback."""
    from workflows._loopback import keep_ray_on_loopback

    keep_ray_on_loopback()
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        namespace="hivemesh-tests",
    )
    try:
        yield
    finally:
        ray.shutdown()
