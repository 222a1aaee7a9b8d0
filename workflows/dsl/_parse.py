"""Reading and parsing workflow files within bounds (:class:`ParseLimits`).

Every problem is a :class:`WorkflowDefinitionError` of one line, ``"source:line: message"``;
a bound broken is its subclass :class:`WorkflowLimitError`, which names the bound. Nothing
else escapes, whatever the bytes: this is what a node runs on files it is sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from os import PathLike

from workflows.dsl._limits import ParseLimits, check_size, line_at
from workflows.dsl._source import first_error
from workflows.dsl._spec import WorkflowSpec
from workflows.dsl._validate import check_document
from workflows.errors import WorkflowDefinitionError, WorkflowLimitError

Clock = Callable[[], float]


def read_workflow_file(path: str | PathLike[str], limits: ParseLimits | None = None) -> bytes:
    """The bytes of a workflow file, reading no more than ``limits.max_bytes`` + 1 of them."""
    limits = limits or ParseLimits()
    source = str(path)
    try:
        with open(path, "rb") as file:
            data = file.read(limits.max_bytes + 1)
    except OSError as exc:
        raise WorkflowDefinitionError(
            f"cannot read the workflow file: {exc.strerror or exc}", source
        ) from None
    check_size(data, source, limits)
    return data


def load_workflow(path: str | PathLike[str], *, limits: ParseLimits | None = None) -> WorkflowSpec:
    """Read and parse a workflow file; errors name the file as given."""
    return parse_workflow(read_workflow_file(path, limits), source=str(path), limits=limits)


def parse_workflow(
    text: str | bytes,
    *,
    source: str = "<string>",
    limits: ParseLimits | None = None,
    clock: Clock = time.monotonic,
) -> WorkflowSpec:
    """Parse and validate workflow YAML (text, or the UTF-8 bytes of a file) within
    ``limits`` (default: :class:`ParseLimits`' safe defaults). ``source`` names it in error
    messages; ``clock`` measures ``limits.timeout_s``. The error raised is the first problem
    :func:`check_document` finds, saying how many more there are."""
    report = check_document(text, source=source, limits=limits, clock=clock)
    if report.error is not None:
        raise report.error
    if report.spec is None:
        raise first_error(list(report.problems), source)
    return report.spec


def workflow_bytes(
    text: str | bytes, *, source: str = "<string>", limits: ParseLimits | None = None
) -> bytes:
    """The UTF-8 bytes of a workflow, after the checks that need no parsing: its size
    (``max_bytes``) and, for text, that it is valid Unicode. For a host that hands the
    parse to a worker: what fails here is refused without one."""
    limits = limits or ParseLimits()
    if isinstance(text, bytes):
        check_size(text, source, limits)
        return text
    if len(text) > limits.max_bytes:  # (UTF-8 has at least one byte a character)
        raise WorkflowLimitError(
            f"the text is larger than {limits.max_bytes} bytes",
            source,
            line_at(text, limits.max_bytes),
            bound="max_bytes",
            limit=limits.max_bytes,
        )
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from a JSON "\ud800"
        raise WorkflowDefinitionError(
            f"the text is not valid Unicode (a lone surrogate U+{ord(text[exc.start]):04X})",
            source,
            line_at(text, exc.start),
        ) from None
    check_size(data, source, limits)
    return data
