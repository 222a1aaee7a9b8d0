"""Tools installed per step: pip requirements, the tool a package publishes, and a step's
environment parameters.

A step names a package in one of two ways (docs/workflows.md, "Tools installed per step"):

- ``tool: PACKAGE@VERSION`` where ``PACKAGE`` has no dot (a tool name always has one:
  ``text.upper@1`` stays an installed tool with a version requirement): the requirement is
  ``PACKAGE==VERSION`` and the tool is the one the package publishes under its own name (the
  only tool of the group named like the package, ``-`` and ``.`` read as ``_``) or else the
  only tool it publishes;
- ``tool: NAME`` with ``package: "PIP REQUIREMENT"``: the tool ``NAME`` of that package.

Only plain requirements are accepted (a name, extras, version specifiers): no URL, path,
environment marker or pip option, since the text ends up in a requirements file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, distribution
from typing import Any

from workflows.errors import ToolConfigError, UnknownToolError
from workflows.tools._registry import ENTRY_POINT_GROUP
from workflows.tools._tool import TOOL_NAME_PATTERN, Tool

MAX_REQUIREMENT_CHARS = 200
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_VERSION = r"[A-Za-z0-9][A-Za-z0-9.+!*_-]*"
_SPEC = rf"(?:===|==|!=|~=|<=|>=|<|>)\s*{_VERSION}"
PACKAGE_NAME_RE = re.compile(rf"^{_NAME}$")
VERSION_RE = re.compile(rf"^{_VERSION}$")
_REQUIREMENT_RE = re.compile(
    rf"^\s*(?P<name>{_NAME})\s*(?P<extras>\[\s*{_NAME}(?:\s*,\s*{_NAME})*\s*\])?"
    rf"\s*(?P<specs>{_SPEC}(?:\s*,\s*{_SPEC})*)?\s*$"
)
_TOOL_NAME_RE = re.compile(TOOL_NAME_PATTERN)

MAX_PARAMETERS = 64
MAX_PARAMETER_NAME = 128
MAX_PARAMETER_VALUE = 4096
MAX_PARAMETERS_BYTES = 32 * 1024
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# names a step may not set: they would change how Python, pip, Ray or the loader behave
# (e.g. PIP_INDEX_URL would redirect the step's own install)
RESERVED_PREFIXES = ("PIP_", "RAY_", "PYTHON", "LD_", "HIVEMESH_", "VIRTUAL_ENV", "UV_")
RESERVED_NAMES = frozenset({"PATH", "HOME", "SHELL", "USER", "TMPDIR", "CONDA_PREFIX"})
PARAMETERS_ENV = "HIVEMESH_PARAMETERS"
"""Set in a step's process with parameters: their names, comma-separated (``util.parameters``
reads them, and nothing else of the node's environment)."""


def check_requirement(text: str) -> str:
    """A pip requirement, checked and without spaces (``"hm-echo[x] >=1, <2"`` →
    ``"hm-echo[x]>=1,<2"``); :class:`ToolConfigError` (a ``ValueError``) otherwise."""
    if not isinstance(text, str):
        raise ToolConfigError(f"a package must be a pip requirement string, not {text!r}")
    if len(text) > MAX_REQUIREMENT_CHARS:
        raise ToolConfigError(f"package requirement longer than {MAX_REQUIREMENT_CHARS} characters")
    if not _REQUIREMENT_RE.match(text):
        raise ToolConfigError(
            f"invalid package requirement {text!r}: expected a name with optional extras and "
            "version specifiers, e.g. 'my-tools==1.2.0' or 'my-tools>=1,<2' (no URLs, paths, "
            "markers or pip options)"
        )
    return "".join(text.split())


def requirement_name(requirement: str) -> str:
    """The distribution name of a checked requirement (``"hm-echo[x]>=1"`` → ``"hm-echo"``)."""
    match = _REQUIREMENT_RE.match(requirement)
    if match is None:
        raise ToolConfigError(f"invalid package requirement {requirement!r}")
    return match.group("name")


def normalize_package(name: str) -> str:
    """A distribution name as a tool group: lower case, runs of ``-_.`` as ``_``."""
    return re.sub(r"[-_.]+", "_", name).lower()


def is_package_ref(ref: str) -> bool:
    """Whether ``tool: ref`` names a package (``PACKAGE@VERSION`` with no dot in
    ``PACKAGE``) rather than an installed tool."""
    name, at, _ = ref.strip().partition("@")
    return bool(at) and "." not in name and bool(PACKAGE_NAME_RE.match(name.strip()))


def package_requirement(name: str, version: str) -> str:
    """``PACKAGE@VERSION`` as a requirement (``PACKAGE==VERSION``), checked."""
    version = version.strip()
    if not VERSION_RE.match(version):
        raise ToolConfigError(
            f"invalid version {version!r} of package {name!r}: expected e.g. 1.2.0"
        )
    return check_requirement(f"{name.strip()}=={version}")


def load_package_tool(requirement: str, tool_name: str | None = None) -> Tool:
    """The tool a step asks for, from the ``hivemesh.tools`` entry points of the installed
    distribution named in ``requirement``: ``tool_name``, or when None the tool the package
    publishes under its own name, else its only tool. :class:`UnknownToolError` otherwise."""
    dist_name = requirement_name(requirement)
    try:
        dist = distribution(dist_name)
    except PackageNotFoundError:
        raise UnknownToolError(
            dist_name, f"package {requirement!r} is not installed in the step's environment"
        ) from None
    eps = {ep.name: ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP}
    if tool_name is None:
        own = [name for name in eps if name.split(".", 1)[0] == normalize_package(dist_name)]
        if len(own) == 1:
            tool_name = own[0]
        elif len(eps) == 1:
            tool_name = next(iter(eps))
        else:
            offered = ", ".join(sorted(eps)) or "none"
            raise UnknownToolError(
                dist_name,
                f"package {requirement!r} publishes {len(eps)} tools ({offered}), none of them "
                f"alone under its name: write 'tool: NAME' with 'package: \"{requirement}\"'",
            )
    ep = eps.get(tool_name)
    if ep is None:
        offered = ", ".join(sorted(eps)) or "none"
        raise UnknownToolError(
            tool_name, f"package {requirement!r} does not publish it (its tools: {offered})"
        )
    try:
        loaded = ep.load()
    except Exception as exc:  # the package's own import failed: say so, as one line
        raise UnknownToolError(
            tool_name,
            f"package {requirement!r} failed to load it: {type(exc).__name__}: {exc}",
        ) from None
    if not isinstance(loaded, Tool) or loaded.name != tool_name:
        raise UnknownToolError(
            tool_name, f"entry point {ep.value!r} of package {requirement!r} is not that tool"
        )
    return loaded


def check_parameters(items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> dict[str, str]:
    """A step's ``parameters`` (names to values) as environment variables: names valid and
    not reserved, values strings (numbers converted), within the bounds. Raises
    :class:`ToolConfigError` (a ``ValueError``) saying what is wrong."""
    pairs = list(items.items() if isinstance(items, Mapping) else items)
    if len(pairs) > MAX_PARAMETERS:
        raise ToolConfigError(f"a step has {len(pairs)} parameters; at most {MAX_PARAMETERS}")
    out: dict[str, str] = {}
    total = 0
    for name, value in pairs:
        if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
            raise ToolConfigError(
                f"invalid parameter name {name!r}: an environment variable name (letters, "
                "digits and '_', not starting with a digit)"
            )
        if len(name) > MAX_PARAMETER_NAME:
            raise ToolConfigError(f"parameter name longer than {MAX_PARAMETER_NAME} characters")
        upper = name.upper()
        if upper in RESERVED_NAMES or upper.startswith(RESERVED_PREFIXES):
            raise ToolConfigError(
                f"parameter {name!r} is reserved: a step may not set PATH, HOME, PYTHON*, "
                "PIP_*, RAY_*, LD_*, HIVEMESH_* and the like"
            )
        if name in out:
            raise ToolConfigError(f"duplicate parameter name {name!r}")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ToolConfigError(
                f"parameter {name!r} must be a string or a number, not "
                f"{'a boolean' if isinstance(value, bool) else type(value).__name__} "
                '(quote it: "...")'
            )
        text = value if isinstance(value, str) else repr(value)
        if len(text) > MAX_PARAMETER_VALUE:
            raise ToolConfigError(
                f"parameter {name!r} is {len(text)} characters; at most {MAX_PARAMETER_VALUE}"
            )
        if "\x00" in text:
            raise ToolConfigError(f"parameter {name!r} contains a NUL character")
        total += len(name) + len(text)
        if total > MAX_PARAMETERS_BYTES:
            raise ToolConfigError(
                f"a step's parameters are over {MAX_PARAMETERS_BYTES} characters in all"
            )
        out[name] = text
    return out


def step_environment(parameters: Mapping[str, str]) -> dict[str, str]:
    """The environment variables of a step's process: its parameters, and their names in
    :data:`PARAMETERS_ENV` (empty for a step without parameters)."""
    if not parameters:
        return {}
    return {**parameters, PARAMETERS_ENV: ",".join(sorted(parameters))}


def is_tool_name(name: str) -> bool:
    return bool(_TOOL_NAME_RE.match(name))
