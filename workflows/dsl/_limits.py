"""The bounds a workflow file is parsed within, and the checks on its raw bytes.

A workflow file may come from anyone who can submit one: every resource its parsing takes
is bounded, and each bound broken is a :class:`~workflows.errors.WorkflowLimitError` that
names the bound, its limit and the line. The bounds, in the order they are checked:

- ``max_bytes``: the file's size, checked before anything is decoded;
- UTF-8 (no limit to configure: a file that is not UTF-8 text is refused at once);
- while the YAML is read, event by event and before anything is built
  (:mod:`workflows.dsl._compose`): ``max_depth`` (nesting), ``max_value_bytes`` (any one
  scalar), ``max_nodes`` and ``max_expanded_bytes`` (the document's nodes and its scalars'
  bytes, with every alias counted as a full copy of what it points at: an alias bomb
  breaks them at its first offending alias), ``max_steps``, and ``timeout_s`` (wall time).

What is built afterwards (Python objects, the models, the reference and cycle checks) is
proportional to what was counted, so the whole parse is bounded in time and memory.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from workflows.errors import WorkflowDefinitionError, WorkflowLimitError

MAX_NUMBER_DIGITS = 4300
"""Longest number accepted (Python's own limit for converting decimal text to an int)."""


class ParseLimits(BaseModel):
    """Bounds of parsing one workflow file. The defaults are safe for a node that accepts
    workflows from its clients; a node's ``workflow_files`` config section sets them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_depth: int = Field(default=64, ge=4, le=200)
    max_nodes: int = Field(default=100_000, ge=100, le=10_000_000)
    max_steps: int = Field(default=1000, ge=1, le=100_000)
    max_value_bytes: int = Field(default=256 * 1024, ge=64, le=64 * 1024 * 1024)
    max_expanded_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    timeout_s: float = Field(default=5.0, gt=0, le=600)


def line_at(data: bytes | str, offset: int) -> int:
    """The 1-based line of ``offset`` in ``data``."""
    if isinstance(data, bytes):
        return data.count(b"\n", 0, offset) + 1
    return data.count("\n", 0, offset) + 1


def column_at(data: bytes | str, offset: int) -> int:
    """The 1-based column of ``offset`` in ``data`` (counted in bytes for bytes)."""
    if isinstance(data, bytes):
        return offset - data.rfind(b"\n", 0, offset)
    return offset - data.rfind("\n", 0, offset)


def check_size(data: bytes, source: str, limits: ParseLimits) -> None:
    """Refuse a file over ``max_bytes`` (naming the line where it crosses the limit)."""
    if len(data) > limits.max_bytes:
        error = WorkflowLimitError(
            f"the file is larger than {limits.max_bytes} bytes",
            source,
            line_at(data, limits.max_bytes),
            bound="max_bytes",
            limit=limits.max_bytes,
        )
        error.column = column_at(data, limits.max_bytes)
        raise error


def decode(data: bytes, source: str) -> str:
    """UTF-8 text of ``data``; a one-line error naming the first bad byte and its line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        error = WorkflowDefinitionError(
            f"the file is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): "
            "a workflow file is YAML text",
            source,
            line_at(data, exc.start),
        )
        error.column = column_at(data, exc.start)
        raise error from None
