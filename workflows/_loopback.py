"""Keep a local Ray on 127.0.0.1.

On Linux Ray binds a new local cluster to the machine's outward IP address. hivemesh's own
local Rays (a node's, the tests') must stay on loopback. Ray reads the switch for this
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``) once, when ``ray`` is first imported, so both the
environment variable (for Ray's worker processes) and the already-imported constant are set.
"""

from __future__ import annotations

import os

ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def is_loopback_address(address: str | None) -> bool:
    if address is None or address == "local":
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "[::1]")


def keep_ray_on_loopback() -> None:
    os.environ[ENV] = "0"
    try:
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - a Ray without that module
        return
    ray_constants.ENABLE_RAY_CLUSTER = False
