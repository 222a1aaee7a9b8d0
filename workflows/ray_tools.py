"""Running tools as Ray tasks, from trio, without blocking the event loop."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import ray
import trio
from ray.exceptions import RayError, RayTaskError, RuntimeEnvSetupError

from workflows.engine.limits import (
    TRACEBACK_LIMIT_NAME,
    StepLimits,
    bound_error_text,
    check_output_size,
    cut_text,
    json_size,
)
from workflows.errors import ToolError, ToolExecutionError
from workflows.tools import ToolRegistry, load_package_tool, tool_call
from workflows.tools._packages import step_environment

MAX_INSTALLED_LISTED = 64
"""Packages a node lists on its card as installed (the most recently used)."""


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


def _invoke_package(
    requirement: str,
    tool_name: str | None,
    version: str | None,
    args: dict[str, Any],
    idempotency_key: str | None = None,
    limits: StepLimits | None = None,
) -> dict[str, Any]:
    """Run a tool of an installed package, in a Ray worker of the step's runtime env (where
    ``requirement`` is installed). Returns ``{"outputs", "tool", "version"}``."""
    from workflows.errors import UnknownToolError
    from workflows.tools import version_matches

    try:
        found = load_package_tool(requirement, tool_name)
        if not version_matches(found.version, version):
            raise UnknownToolError(
                found.name,
                f"package {requirement!r} has version {found.version}, not matching {version!r}",
            )
        with tool_call(idempotency_key):
            outputs = found.invoke(args)
    except ToolError as exc:
        if limits is not None:
            _bound_message(exc, limits)
        raise
    if limits is not None:
        check_output_size(json_size(outputs), limits, f"the output of tool {found.name!r}")
    return {"outputs": outputs, "tool": found.name, "version": found.version}


def _bound_message(exc: ToolError, limits: StepLimits) -> None:
    """Cut a tool error's text to the limits, in place (it keeps its type)."""
    text = bound_error_text(exc.message, limits)
    if text != exc.message:
        exc.message = text
        exc.args = (text, *exc.args[1:])
    tb = getattr(exc, "traceback", None)
    if isinstance(exc, ToolExecutionError) and tb:
        exc.traceback = cut_text(tb, limits.max_traceback_chars, TRACEBACK_LIMIT_NAME, keep="tail")


# System failures (a worker dying) are retried by Ray; tool errors are not.
_invoke_remote = ray.remote(max_retries=3, retry_exceptions=False)(_invoke)
_invoke_package_remote = ray.remote(max_retries=3, retry_exceptions=False)(_invoke_package)


@dataclass(frozen=True)
class PackageInstall:
    """Where pip looks for the packages steps name, and how long an install may take (the
    node's ``tools`` config: ``index_url``, ``no_index``, ``find_links``,
    ``install_timeout_s``)."""

    index_url: str | None = None
    no_index: bool = False
    find_links: tuple[str, ...] = ()
    timeout_s: float = 600.0

    def pip_options(self) -> list[str]:
        """``pip install`` options of a step's runtime env."""
        options = ["--disable-pip-version-check", "--no-input"]
        if self.no_index:
            options.append("--no-index")
        elif self.index_url:
            options += ["--index-url", self.index_url]
        for link in self.find_links:
            options += ["--find-links", link]
        return options

    def runtime_env(self, requirement: str, env_vars: Mapping[str, str]) -> dict[str, Any]:
        """The Ray ``runtime_env`` of a step that needs ``requirement``: its own virtualenv
        (one per requirement, cached by Ray: two versions of a package live side by side)."""
        env: dict[str, Any] = {
            "pip": {"packages": [requirement], "pip_install_options": self.pip_options()},
            "config": {"setup_timeout_seconds": max(1, int(self.timeout_s))},
        }
        if env_vars:
            env["env_vars"] = dict(env_vars)
        return env


@dataclass(frozen=True)
class PackageRun:
    """What a package step produced, and which tool (name, version) of the package ran."""

    outputs: dict[str, Any]
    tool: str
    tool_version: str


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
        *,
        install: PackageInstall | None = None,
        tools: ToolRegistry | None = None,
    ) -> None:
        """``num_cpus``: the CPUs each tool task asks Ray for (Ray's default 1 if None).
        ``limits``: what a tool may produce, checked in the worker (None: not checked).
        ``install``: where pip looks for the packages of package steps (None: such steps
        fail: this node does not install). ``tools``: the node's tools, whose declared
        ``resources`` their tasks ask Ray for."""
        self._limits = limits
        self._limiter = trio.CapacityLimiter(max_concurrent)
        self._num_cpus = num_cpus
        self._remote = (
            _invoke_remote if num_cpus is None else _invoke_remote.options(num_cpus=num_cpus)
        )
        self.install = install
        self._tools = tools
        # requirements installed (and run) here, most recent last: the node's card lists them
        self._installed: dict[str, None] = {}

    @property
    def installed(self) -> list[str]:
        """Requirements of package steps that ran here (at most the last 64)."""
        return list(self._installed)

    def _task(
        self,
        remote: Any,
        name: str | None,
        resources: Mapping[str, float] | None,
        runtime_env: dict[str, Any] | None,
    ) -> Any:
        """``remote`` with the options of one step's task: the resources the tool declares,
        with the step's own (``placement.resources``) over them, and its runtime env.
        Blocking (it may ask the cluster what it has): call it from a worker thread."""
        wanted: dict[str, float] = {}
        if name is not None and self._tools is not None and self._tools.has(name):
            wanted.update(self._tools.get(name).resources)
        wanted.update(resources or {})
        if not wanted and not runtime_env and remote is _invoke_remote:
            return self._remote  # (built once: the common case)
        options = ray_resource_options(wanted) if wanted else {}
        if runtime_env:
            options["runtime_env"] = runtime_env
        if self._num_cpus is not None:  # (the slot's share unless the tool or step says)
            options = {"num_cpus": self._num_cpus, **options}
        return remote.options(**options) if options else remote

    async def __call__(
        self,
        name: str,
        version: str | None,
        args: dict[str, Any],
        idempotency_key: str | None = None,
        *,
        resources: dict[str, float] | None = None,
        parameters: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run tool ``name``; inside it, ``current_call().idempotency_key`` is the key and
        ``parameters`` are environment variables. ``resources`` (a step's
        ``placement.resources``, over what the tool declares) are asked of Ray for its task;
        a resource the cluster does not have at all fails the step at once (Ray would leave
        the task pending forever)."""
        env = {"env_vars": step_environment(parameters)} if parameters else None

        def submit() -> ray.ObjectRef:
            remote = self._task(_invoke_remote, name, resources, env)
            return remote.remote(name, version, args, idempotency_key, self._limits)

        ref = await trio.to_thread.run_sync(submit)
        return cast(dict[str, Any], await self._result(ref, name))

    async def run_package(
        self,
        requirement: str,
        tool: str | None,
        version: str | None,
        args: dict[str, Any],
        idempotency_key: str | None = None,
        *,
        resources: dict[str, float] | None = None,
        parameters: Mapping[str, str] | None = None,
    ) -> PackageRun:
        """Run ``tool`` of package ``requirement`` (None: the package's own tool) in a Ray
        task whose runtime env has the package installed and ``parameters`` as environment
        variables. Raises :class:`ToolError` (e.g. the install failed)."""
        if self.install is None:
            raise ToolExecutionError(
                f"this node does not install packages (package {requirement!r}): set "
                "tools.install: true in its config",
                tool,
            )
        env = self.install.runtime_env(requirement, step_environment(parameters or {}))

        def submit() -> ray.ObjectRef:
            remote = self._task(_invoke_package_remote, None, resources, env)
            return remote.remote(requirement, tool, version, args, idempotency_key, self._limits)

        ref = await trio.to_thread.run_sync(submit)
        result = await self._result(ref, tool or requirement, requirement)
        self._installed.pop(requirement, None)
        self._installed[requirement] = None
        while len(self._installed) > MAX_INSTALLED_LISTED:
            self._installed.pop(next(iter(self._installed)))
        return PackageRun(result["outputs"], result["tool"], result["version"])

    async def _result(self, ref: ray.ObjectRef, name: str, requirement: str | None = None) -> Any:
        try:
            # trio-typing's stubs (pulled in by libp2p) predate ``abandon_on_cancel``.
            return await trio.to_thread.run_sync(  # type: ignore[call-arg]
                functools.partial(ray.get, ref),
                limiter=self._limiter,
                abandon_on_cancel=True,
            )
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
        except RuntimeEnvSetupError as exc:
            raise ToolExecutionError(
                self._bound(f"could not install package {requirement or name!r}: {_pip_error(exc)}")
            ) from None
        except RayError as exc:
            raise ToolExecutionError(
                self._bound(f"tool {name!r} could not run on Ray: {exc}")
            ) from None

    def _bound(self, text: str) -> str:
        return text if self._limits is None else bound_error_text(text, self._limits)


def _pip_error(exc: RuntimeEnvSetupError) -> str:
    """The telling part of a failed runtime env setup: pip's ERROR lines, else the end."""
    text = str(exc)
    errors = [line.strip() for line in text.splitlines() if line.strip().startswith("ERROR")]
    if errors:
        return " ".join(dict.fromkeys(errors))[:1000]
    return " ".join(text.split())[-1000:]
