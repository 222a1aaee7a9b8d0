"""Running tools as Ray tasks, from trio, without blocking the event loop."""

from __future__ import annotations

import functools
from typing import Any, cast

import ray
import trio
from ray.exceptions import RayError, RayTaskError

from workflows.errors import ToolError, ToolExecutionError
from workflows.tools import ToolRegistry


@functools.lru_cache(maxsize=1)
def _worker_registry() -> ToolRegistry:
    # One registry per Ray worker process; entry points are read once.
    return ToolRegistry.from_entry_points("all")


def _invoke(name: str, version: str | None, args: dict[str, Any]) -> dict[str, Any]:
    return _worker_registry().get(name, version).invoke(args)


# System failures (a worker dying) are retried by Ray; tool errors are not.
_invoke_remote = ray.remote(max_retries=3, retry_exceptions=False)(_invoke)


class RayToolRunner:
    """Runs a tool on this node's Ray cluster. Blocking Ray calls go to worker threads."""

    def __init__(self, max_concurrent: int = 64) -> None:
        self._limiter = trio.CapacityLimiter(max_concurrent)

    async def __call__(
        self, name: str, version: str | None, args: dict[str, Any]
    ) -> dict[str, Any]:
        ref = await trio.to_thread.run_sync(
            functools.partial(_invoke_remote.remote, name, version, args)
        )
        try:
            # trio-typing's stubs (pulled in by libp2p) predate ``abandon_on_cancel``.
            result = await trio.to_thread.run_sync(  # type: ignore[call-arg]
                functools.partial(ray.get, ref),
                limiter=self._limiter,
                abandon_on_cancel=True,
            )
            return cast(dict[str, Any], result)
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(functools.partial(ray.cancel, ref, force=False))
            raise
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, ToolError):
                raise cause from None
            raise ToolExecutionError(
                f"tool {name!r} failed: {type(cause).__name__}: {cause}"
            ) from None
        except RayError as exc:
            raise ToolExecutionError(f"tool {name!r} could not run on Ray: {exc}") from None
