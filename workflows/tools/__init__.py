"""Tools that workflow steps call: the :class:`Tool` type, the :func:`tool` decorator and
the :class:`ToolRegistry` that loads them from the ``hivemesh.tools`` entry points.

The built-in tools live in :mod:`workflows.tools.text`, :mod:`workflows.tools.math` and
:mod:`workflows.tools.util`; they are loaded through their entry points, not imported here.
"""

from workflows.tools._context import ToolCallContext, current_call, tool_call
from workflows.tools._packages import (
    check_parameters,
    check_requirement,
    is_package_ref,
    load_package_tool,
    normalize_package,
    package_requirement,
    requirement_name,
)
from workflows.tools._registry import (
    ENTRY_POINT_GROUP,
    ToolRegistry,
    parse_selection,
    split_tool_ref,
    version_matches,
)
from workflows.tools._tool import (
    RESULT_FIELD,
    TOOL_NAME_PATTERN,
    Tool,
    check_tool_name,
    tool,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "RESULT_FIELD",
    "TOOL_NAME_PATTERN",
    "Tool",
    "ToolCallContext",
    "ToolRegistry",
    "check_parameters",
    "check_requirement",
    "check_tool_name",
    "current_call",
    "is_package_ref",
    "load_package_tool",
    "normalize_package",
    "package_requirement",
    "parse_selection",
    "requirement_name",
    "split_tool_ref",
    "tool",
    "tool_call",
    "version_matches",
]
