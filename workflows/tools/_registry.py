"""The tools a node offers, loaded from the ``hivemesh.tools`` entry-point group.

Any installed distribution can contribute tools: an entry point named after the tool
(``"text.upper" = "workflows.tools.text:upper"``) that loads to a :class:`Tool`. A node
enables whole groups (``"text,math"``); a plugin that fails to load is logged and skipped so
it can never stop the node from starting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from workflows.errors import ToolConfigError, UnknownToolError
from workflows.tools._tool import Tool, check_tool_name

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hivemesh.tools"


def version_matches(version: str, spec: str | None) -> bool:
    """Whether ``version`` satisfies ``spec``.

    ``None``, ``""`` and ``"*"`` match anything; otherwise ``spec`` matches as a dotted
    prefix: ``"1"`` matches ``1.0.0`` and ``1.4.2`` (not ``10.0.0``), ``"1.2.3"`` only
    ``1.2.3``.
    """
    if spec is None or spec.strip() in ("", "*"):
        return True
    wanted = spec.strip().split(".")
    have = version.strip().split(".")
    return have[: len(wanted)] == wanted


def split_tool_ref(ref: str) -> tuple[str, str | None]:
    """Split ``"text.upper@1.0"`` into ``("text.upper", "1.0")``; no ``@`` gives no version.

    Raises :class:`ToolConfigError` (a ``ValueError``) for a malformed name or empty version.
    """
    name, at, version = ref.strip().partition("@")
    check_tool_name(name)
    if at and not version.strip():
        raise ToolConfigError(
            f"tool reference {ref!r} has an empty version: write 'name' or 'name@1.0.0'", name
        )
    return name, (version.strip() if at else None)


def parse_selection(selection: str | Sequence[str]) -> set[str] | None:
    """Turn ``"all"``, ``"none"``, ``""``, ``"text,math"`` or ``["text", "math"]`` into a set
    of group names; ``None`` means all groups."""
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    groups = {item.strip() for item in items if item.strip()}
    if "all" in groups:
        return None
    groups.discard("none")
    return groups


class ToolRegistry:
    """An immutable set of tools, looked up by name and version."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            if not isinstance(item, Tool):
                raise ToolConfigError(f"not a Tool: {item!r}")
            if item.name in self._tools:
                raise ToolConfigError(f"duplicate tool name {item.name!r}", item.name)
            self._tools[item.name] = item

    @classmethod
    def from_entry_points(
        cls,
        selection: str | Sequence[str] = "all",
        *,
        eps: Iterable[EntryPoint] | None = None,
    ) -> ToolRegistry:
        """Load the tools of the selected groups from the ``hivemesh.tools`` entry points.

        ``selection`` is ``"all"``, ``"none"``/``""``, or group names (``"text,math"`` or
        ``["text", "math"]``). An unknown group raises :class:`ToolConfigError` listing the
        available ones. ``eps`` replaces the installed entry points (for tests).
        """
        available = list(entry_points(group=ENTRY_POINT_GROUP) if eps is None else eps)
        known_groups = sorted({ep.name.split(".", 1)[0] for ep in available})
        wanted = parse_selection(selection)
        if wanted is not None:
            unknown = sorted(wanted - set(known_groups))
            if unknown:
                raise ToolConfigError(
                    f"unknown tool group{'s' if len(unknown) > 1 else ''} "
                    f"{', '.join(repr(g) for g in unknown)}; available groups: "
                    f"{', '.join(known_groups) or 'none installed'} (or 'all' / 'none')"
                )
        tools: dict[str, Tool] = {}
        for ep in available:
            if wanted is not None and ep.name.split(".", 1)[0] not in wanted:
                continue
            loaded = _load(ep)
            if loaded is None:
                continue
            if tools.get(loaded.name) is loaded:  # the same plugin listed twice
                continue
            if loaded.name in tools:
                log.warning(
                    "tool %r from entry point %r is already provided by %r; ignoring it",
                    loaded.name,
                    ep.value,
                    tools[loaded.name].fn.__module__,
                )
                continue
            tools[loaded.name] = loaded
        return cls(tools[name] for name in sorted(tools))

    def get(self, name: str, version_spec: str | None = None) -> Tool:
        """The tool called ``name`` (``"name@version"`` is accepted too) whose version matches
        ``version_spec``. Raises :class:`UnknownToolError` otherwise."""
        if "@" in name:
            name, ref_version = split_tool_ref(name)
            version_spec = version_spec or ref_version
        found = self._tools.get(name)
        if found is None:
            enabled = ", ".join(self.names()) or "none"
            raise UnknownToolError(
                name, f"not installed or not enabled on this node (enabled tools: {enabled})"
            )
        if not version_matches(found.version, version_spec):
            raise UnknownToolError(
                name,
                f"no version matching {version_spec!r} (this node has version {found.version})",
            )
        return found

    def has(self, name: str, version_spec: str | None = None) -> bool:
        """Whether :meth:`get` would find a tool."""
        try:
            self.get(name, version_spec)
        except (UnknownToolError, ToolConfigError):
            return False
        return True

    def names(self) -> list[str]:
        """Tool names, sorted."""
        return sorted(self._tools)

    def groups(self) -> list[str]:
        """Names of the groups with at least one tool, sorted."""
        return sorted({t.group for t in self._tools.values()})

    def specs(self) -> list[dict[str, Any]]:
        """:meth:`Tool.spec` of every tool, sorted by name."""
        return [self._tools[name].spec() for name in self.names()]

    def __iter__(self) -> Iterator[Tool]:
        return iter([self._tools[name] for name in self.names()])

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.has(name)

    def __repr__(self) -> str:
        return f"ToolRegistry({self.names()!r})"


def _load(ep: EntryPoint) -> Tool | None:
    try:
        loaded = ep.load()
    except Exception as exc:  # a broken plugin must not stop the node: log it and skip it
        log.warning(
            "skipping tool entry point %r (%s): failed to load: %s: %s",
            ep.name,
            ep.value,
            type(exc).__name__,
            exc,
        )
        return None
    if not isinstance(loaded, Tool):
        log.warning(
            "skipping tool entry point %r (%s): it loads to %s, not a workflows.tools.Tool",
            ep.name,
            ep.value,
            type(loaded).__name__,
        )
        return None
    if loaded.name != ep.name:
        log.warning(
            "skipping tool entry point %r (%s): the tool it loads is named %r",
            ep.name,
            ep.value,
            loaded.name,
        )
        return None
    return loaded
