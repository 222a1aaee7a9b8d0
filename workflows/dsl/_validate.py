"""Every problem of a workflow file, each with its line and column: what ``hivemesh
validate`` prints, and what :func:`workflows.dsl.parse_workflow` raises the first of.

The file goes through the same bounded reading as a node's (:mod:`workflows.dsl._compose`
within :class:`ParseLimits`): a hostile file gives the one error of the bound it breaks,
and so does a YAML syntax error (the parser cannot go on past it). A file that reads as
YAML is then checked in passes that each report everything they find:

1. duplicate keys and keys reserved for the parser (``source``, ``line``);
2. the shape, by the pydantic models (:mod:`workflows.dsl._spec`): unknown keys (with "did
   you mean"), missing keys, wrong types, invalid names;
3. what spans the parts, on the raw data so that a typo in one step hides nothing in the
   others (:func:`~workflows.dsl._checks.workflow_problems`): duplicate names, references
   to inputs, steps or outputs that do not exist, a dependency cycle;
4. given a :class:`ToolCatalog`, each well-formed step against its tool
   (:func:`~workflows.dsl._checks.tool_problems`).

A new part of the language adds its fields to the models (pass 2 and the JSON Schema then
cover them) and, if it spans steps, a generator of problems to pass 3.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from workflows.dsl._checks import ToolCatalog, tool_problems, workflow_problems
from workflows.dsl._limits import ParseLimits, check_size, decode
from workflows.dsl._source import (
    Diagnostic,
    Loc,
    Positions,
    Problem,
    diagnose,
    kind_of,
    load_yaml,
    place,
    with_internal_fields,
)
from workflows.dsl._spec import CHECKED_BY_PARSER, MODELS, StepSpec, WorkflowSpec
from workflows.errors import WorkflowDefinitionError

Clock = Callable[[], float]
_CONTEXT = {CHECKED_BY_PARSER: True}


@dataclass(frozen=True)
class Report:
    """What :func:`check_document` found: the spec when there is no problem, else every
    problem in file order."""

    source: str
    problems: tuple[Diagnostic, ...] = ()
    spec: WorkflowSpec | None = None
    error: WorkflowDefinitionError | None = None
    """The error that stopped the reading (a bound, a YAML syntax error), if one did."""

    @property
    def ok(self) -> bool:
        return not self.problems


def check_document(
    text: str | bytes,
    *,
    source: str = "<string>",
    limits: ParseLimits | None = None,
    clock: Clock = time.monotonic,
    tools: ToolCatalog | None = None,
) -> Report:
    """Every problem of a workflow (text, or the UTF-8 bytes of a file), read within
    ``limits``; with ``tools``, also every step against the tools it offers."""
    limits = limits or ParseLimits()
    deadline = clock() + limits.timeout_s
    found: list[Diagnostic] = []
    try:
        if isinstance(text, bytes):
            check_size(text, source, limits)
            text = decode(text, source)
        else:
            from workflows.dsl._parse import workflow_bytes

            workflow_bytes(text, source=source, limits=limits)
        data, positions = load_yaml(
            text, source, limits, deadline=deadline, clock=clock, problems=found
        )
    except WorkflowDefinitionError as exc:  # a bound, a syntax error: nothing can follow
        return Report(source, (Diagnostic.of(exc),), error=exc)
    if data is None:
        message = "the workflow is empty: it needs at least an 'id' and a list of 'steps'"
        return Report(source, (Diagnostic(message, source, 1, 1),))
    if not isinstance(data, dict):
        message = f"a workflow must be a mapping with 'id' and 'steps' keys, not {kind_of(data)}"
        at = positions.value(()) or (1, 1)
        return Report(source, (*found, Diagnostic(message, source, *at)))
    data = with_internal_fields(data, positions, source, MODELS, found)
    spec: WorkflowSpec | None = None
    try:
        spec = WorkflowSpec.model_validate(data, context=_CONTEXT)
    except ValidationError as exc:
        found += diagnose(exc, data, positions, source, MODELS)
    found += _placed(workflow_problems(data), positions, source)
    if tools is not None:
        found += _placed(_tool_problems(data, tools), positions, source)
    problems = tuple(sorted(dict.fromkeys(found), key=place))
    return Report(source, problems, None if problems else spec)


def _tool_problems(data: dict[str, Any], tools: ToolCatalog) -> Iterable[Problem]:
    """The steps that have the right shape, against ``tools`` (a step with the wrong shape
    was reported already, and is not guessed at)."""
    steps: list[tuple[int, StepSpec]] = []
    raw_steps = data.get("steps")
    for index, raw in enumerate(raw_steps if isinstance(raw_steps, list) else ()):
        try:
            steps.append((index, StepSpec.model_validate(raw, context=_CONTEXT)))
        except ValidationError:
            continue
    outputs: list[tuple[int, str, Any]] = []
    raw_outputs = data.get("outputs")
    for index, raw in enumerate(raw_outputs if isinstance(raw_outputs, list) else ()):
        if isinstance(raw, dict) and isinstance(raw.get("name"), str) and "value" in raw:
            outputs.append((index, raw["name"], raw["value"]))
    return tool_problems(steps, outputs, tools)


def _placed(problems: Iterable[Problem], positions: Positions, source: str) -> list[Diagnostic]:
    placed: list[Diagnostic] = []
    for problem in problems:
        loc: Loc = problem.loc
        at = positions.value(loc)
        line, column = at if at else (None, None)
        placed.append(Diagnostic(problem.message, source, line, column))
    return placed
