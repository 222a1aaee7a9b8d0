"""Running tools as Ray tasks, from trio, without blocking the event loop."""

from __future__ import annotations

import functools
from typing import Any, cast

import ray
import trio
from ray.exceptions import RayError, RayTaskError

from workflows.engine.limits import StepLimits, bound_error_text, check_output_size, json_size
from workflows.errors import ToolError, ToolExecutionError
from workflows.tools import ToolRegistry, tool_call


@functools.lru_cache(maxsize=1)
def _worker_registry() -> ToolRegistry:
    # One registry per Ray worker process; entry points are read once.
    return ToolRegistry.from_entry_points("all")


def _invoke(
    name: str,
    version: str | None,
    args: dict[str, Any],
    idempotency_key: str | None = None,
    limits: StepLimits | None = None,
) -> dict[str, Any]:
    """Run the tool in a Ray worker. With ``limits``, an output over the size limit fails
    here, in the worker, so it never reaches the node; an error's text is cut here too."""
    try:
        with tool_call(idempotency_key):
            outputs = _worker_registry().get(name, version).invoke(args)
    except ToolError as exc:
        if limits is not None:
            _bound_message(exc, limits)
        raise
    if limits is not None:
        check_output_size(json_size(outputs), limits, f"the output of tool {name!r}")
    return outputs


def _bound_message(exc: ToolError, limits: StepLimits) -> None:
    """Cut a tool error's text to the limits, in place (it keeps its type)."""
    text = bound_error_text(exc.message, limits)
    if text != exc.message:
        exc.message = text
        exc.args = (text, *exc.args[1:])


# System failures (a worker dying) are retried by Ray; tool errors are not.
_invoke_remote = ray.remote(max_retries=3, retry_exceptions=False)(_invoke)


CANCEL_GRACE_S = 2.0


def ray_resource_options(resources: dict[str, float]) -> dict[str, Any]:
    """Ray task options asking for ``resources`` (``num_cpus``, ``num_gpus``, ``memory``
    or custom names). Blocking (asks the cluster what it has): call it from a thread.
    Raises :class:`ToolExecutionError` naming a resource the cluster has too little of."""
    total = ray.cluster_resources()
    names = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
    custom: dict[str, float] = {}
    options: dict[str, Any] = {}
    for key, amount in resources.items():
        have = total.get(names.get(key, key), 0.0)
        if amount > have:
            raise ToolExecutionError(
                f"the step needs {key}={amount:g}, but this node's Ray cluster has "
                f"{have:g} in all: lower placement.resources, or run it where there is more"
            )
        if key in names:
            options[key] = int(amount) if key == "memory" else amount
        else:
            custom[key] = amount
    if custom:
        options["resources"] = custom
    return options


def stop_task(ref: ray.ObjectRef, grace_s: float = CANCEL_GRACE_S) -> None:
    stop_tasks([ref], grace_s)


def stop_tasks(refs: list[ray.ObjectRef], grace_s: float = CANCEL_GRACE_S) -> None:
    """Stop a running Ray task for real (blocking; call it from a worker thread).

    ``ray.cancel(force=False)`` only interrupts Python code between bytecodes: a step blocked
    in a long C call (``time.sleep``, I/O) keeps running. After ``grace_s`` the worker is
    killed (``force=True``)."""
    try:
        for ref in refs:
            ray.cancel(ref, force=False)
        _, still_running = ray.wait(refs, num_returns=len(refs), timeout=grace_s)
        for ref in still_running:
            ray.cancel(ref, force=True)
    except Exception:  # already finished, or Ray is shutting down: nothing to stop
        pass


class RayToolRunner:
    """Runs a tool on this node's Ray cluster. Blocking Ray calls go to worker threads."""

    def __init__(
        self,
        max_concurrent: int = 64,
        num_cpus: float | None = None,
        limits: StepLimits | None = None,
    ) -> None:
        """``num_cpus``: the CPUs each tool task asks Ray for (Ray's default 1 if None).
        ``limits``: what a tool may produce, checked in the worker (None: not checked)."""
        self._limits = limits
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._remote = (
            _invoke_remote if num_cpus is None else _invoke_remote.options(num_cpus=num_cpus)
        )

    async def __call__(
        self,
        name: str,
        version: str | None,
        args: dict[str, Any],
        idempotency_key: str | None = None,
        *,
        resources: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """Run tool ``name``; inside it, ``current_call().idempotency_key`` is the key.
        ``resources`` (a step's ``placement.resources``) are asked of Ray for its task; a
        resource the cluster does not have at all fails the step at once (Ray would leave
        the task pending forever)."""
        remote = self._remote
        if resources:
            options = await trio.to_thread.run_sync(ray_resource_options, resources)
            remote = remote.options(**options)
        ref = await trio.to_thread.run_sync(
            functools.partial(remote.remote, name, version, args, idempotency_key, self._limits)
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
                await trio.to_thread.run_sync(functools.partial(stop_task, ref))
            raise
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, ToolError):
                raise cause from None
            raise ToolExecutionError(
                self._bound(f"tool {name!r} failed: {type(cause).__name__}: {cause}")
            ) from None
        except RayError as exc:
            raise ToolExecutionError(
                self._bound(f"tool {name!r} could not run on Ray: {exc}")
            ) from None

    def _bound(self, text: str) -> str:
        return text if self._limits is None else bound_error_text(text, self._limits)
