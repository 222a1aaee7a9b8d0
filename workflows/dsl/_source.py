"""Where a YAML workflow's problems are: line-tracking YAML loading, and the translation
of pydantic's validation errors into ``"source:line: message"`` for the person who wrote
the file."""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from workflows.dsl._compose import BoundedComposer, new_parser, reader_error_line
from workflows.dsl._limits import ParseLimits
from workflows.errors import WorkflowDefinitionError, WorkflowLimitError

Loc = tuple[str | int, ...]
"""A position inside the parsed document: keys and list indexes from the top."""

INTERNAL_FIELDS = {"source", "line"}  # filled in by the parser, never written in YAML

ModelsByPlace = Mapping[tuple[str, ...], type[BaseModel]]
"""The model of each place in the document (by its keys), to list its allowed keys."""


Pos = tuple[int, int]
"""A 1-based (line, column)."""


@dataclass
class Positions:
    """Where the parts of a YAML document are: ``keys`` maps the place of a mapping's key
    (or a list's item) to where that key (item) starts, ``values`` the place of every value
    to where the value starts. A place missing (an alias, a merged key) is looked up at its
    nearest ancestor."""

    keys: dict[Loc, Pos] = field(default_factory=dict)
    values: dict[Loc, Pos] = field(default_factory=dict)

    def value(self, loc: Loc) -> Pos | None:
        """Where the value at ``loc`` (else its nearest recorded ancestor) starts; where
        its key starts if the value starts on a later line (a block list or mapping: the
        line that names it is where to look)."""
        for end in range(len(loc), -1, -1):
            value, key = self.values.get(loc[:end]), self.keys.get(loc[:end])
            if value is not None and key is not None and value[0] != key[0]:
                return key
            if value or key:
                return value or key
        return None

    def key(self, loc: Loc) -> Pos | None:
        """Where the key at ``loc`` starts (else as :meth:`value`)."""
        return self.keys.get(loc) or self.value(loc)

    def line(self, loc: Loc) -> int | None:
        found = self.key(loc)
        return found[0] if found else None


@dataclass(frozen=True)
class Diagnostic:
    """One problem of a workflow file, where it is (1-based line and column, when known).
    ``bound`` names the :class:`ParseLimits` bound a hostile file broke."""

    message: str
    source: str | None = None
    line: int | None = None
    column: int | None = None
    bound: str | None = None

    @classmethod
    def of(cls, exc: WorkflowDefinitionError) -> Diagnostic:
        bound = exc.bound if isinstance(exc, WorkflowLimitError) else None
        message = exc.message.removesuffix(f" (column {exc.column})")  # (said by the place)
        return cls(message, exc.source, exc.line, exc.column, bound)

    def format(self) -> str:
        """``FILE:LINE:COL: error: message`` (as compilers print it, for editors)."""
        where = self.source or "<string>"
        if self.line is not None:
            where += f":{self.line}:{self.column or 1}"
        return f"{where}: error: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.source,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            **({"bound": self.bound} if self.bound else {}),
        }


class Problem(ValueError):
    """A semantic problem found by a model validator, at ``loc`` relative to that model."""

    def __init__(self, message: str, loc: Loc = ()) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc


def load_yaml(
    text: str,
    source: str,
    limits: ParseLimits,
    *,
    deadline: float,
    clock: Callable[[], float] = time.monotonic,
    problems: list[Diagnostic] | None = None,
) -> tuple[Any, Positions]:
    """Parse YAML within ``limits`` into JSON-like data; also return where every key, item
    and value is. Errors are :class:`WorkflowDefinitionError` (or its
    :class:`WorkflowLimitError`) of one line; a duplicate key is one too, unless
    ``problems`` is given: then each duplicate key is added to it and the parse goes on."""
    parser: Any = None
    try:
        parser = new_parser(text)  # (PyYAML's own reader checks every character here)
        node = BoundedComposer(source, limits, deadline=deadline, clock=clock).compose(parser)
        if node is None:
            return None, Positions()
        positions = Positions()
        found: list[Diagnostic] = []
        # before constructing: construction flattens merge keys ('<<') in place
        positions.values[()] = _mark(node)
        _record_positions(node, (), positions, set(), source, found)
        if found and problems is None:
            first = found[0]
            error = WorkflowDefinitionError(first.message, source, first.line)
            error.column = first.column
            raise error
        if problems is not None:
            problems.extend(found)
        return yaml.constructor.SafeConstructor().construct_document(node), positions
    except yaml.reader.ReaderError as exc:
        raise _reader_error(exc, text, source) from None
    except yaml.MarkedYAMLError as exc:
        if "maximum nesting depth" in (exc.problem or ""):  # libyaml's own bound (1000)
            mark = exc.problem_mark
            raise WorkflowLimitError(
                f"nested deeper than {limits.max_depth} levels",
                source,
                mark.line + 1 if mark else None,
                bound="max_depth",
                limit=limits.max_depth,
            ) from None
        raise _yaml_error(exc, source) from None
    except yaml.YAMLError as exc:
        raise WorkflowDefinitionError(f"invalid YAML: {exc}", source) from None
    except RecursionError:  # not expected within max_depth: a last line of defence
        raise WorkflowLimitError(
            "the document nests too deeply to be read",
            source,
            bound="max_depth",
            limit=limits.max_depth,
        ) from None
    finally:
        if parser is not None:
            parser.dispose()


def _reader_error(exc: yaml.reader.ReaderError, text: str, source: str) -> WorkflowDefinitionError:
    char = exc.character
    code = ord(char) if isinstance(char, str) else int(char)
    return WorkflowDefinitionError(
        f"invalid YAML: character U+{code:04X} is not allowed in YAML text (a control "
        "character: remove it, or write it as an escape such as \\x07 in a double-quoted "
        "string)",
        source,
        reader_error_line(exc, text),
    )


def _yaml_error(exc: yaml.MarkedYAMLError, source: str) -> WorkflowDefinitionError:
    mark = exc.problem_mark or exc.context_mark
    message = exc.problem or "syntax error"
    if exc.context and exc.context.startswith("while") and exc.context_mark:
        message += f" ({exc.context} starting on line {exc.context_mark.line + 1})"
    elif exc.context:
        message = f"{exc.context}, {message}"
    if mark:
        message += f" (column {mark.column + 1})"
    error = WorkflowDefinitionError(
        f"invalid YAML: {message}", source, mark.line + 1 if mark else None
    )
    error.column = mark.column + 1 if mark else None
    return error


def _mark(node: yaml.Node) -> Pos:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _record_positions(
    node: yaml.Node,
    loc: Loc,
    positions: Positions,
    seen: set[int],
    source: str,
    problems: list[Diagnostic],
) -> None:
    """Record where each key, item and value inside ``node`` (the value at ``loc``, whose
    own place its parent recorded) starts; add each duplicate key to ``problems``."""
    if id(node) in seen:  # an alias: what is inside was recorded where the anchor is
        return
    seen.add(id(node))
    keys, values = positions.keys, positions.values
    if isinstance(node, yaml.MappingNode):
        has_merge = any(key.tag == "tag:yaml.org,2002:merge" for key, _ in node.value)
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key, at = key_node.value, _mark(key_node)
            if key in first_line and not has_merge:
                message = f"duplicate key {key!r} (first given on line {first_line[key]})"
                problems.append(Diagnostic(message, source, *at))
            first_line.setdefault(key, at[0])
            place = (*loc, key)
            keys[place] = at  # (a duplicate's: the value kept is the last one)
            values[place] = _mark(value_node)
            if not isinstance(value_node, yaml.ScalarNode):
                _record_positions(value_node, place, positions, seen, source, problems)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            place = (*loc, index)
            values[place] = _mark(item)
            if not isinstance(item, yaml.ScalarNode):
                _record_positions(item, place, positions, seen, source, problems)


def with_internal_fields(
    data: dict[str, Any],
    positions: Positions,
    source: str,
    models: ModelsByPlace,
    problems: list[Diagnostic] | None = None,
) -> dict[str, Any]:
    """Reject ``source``/``line`` written by hand, then fill them in. A key written by hand
    is an error raised, or, when ``problems`` is given, added to it (and dropped)."""
    found: list[Diagnostic] = []

    def refuse(who: str, key: str, loc: Loc) -> None:
        at = positions.key(loc)
        line, column = at if at else (None, None)
        found.append(Diagnostic(_unknown_key(who, key, loc[:-1], models), source, line, column))

    if "source" in data:
        refuse("workflow", "source", ("source",))
        data = {k: v for k, v in data.items() if k != "source"}
    steps = data.get("steps")
    if isinstance(steps, list):
        filled: list[Any] = []
        for index, step in enumerate(steps):
            if isinstance(step, dict):
                if "line" in step:
                    who, _ = _where(("steps", index), data)
                    refuse(who, "line", ("steps", index, "line"))
                    step = {k: v for k, v in step.items() if k != "line"}
                step = {**step, "line": positions.line(("steps", index))}
            filled.append(step)
        data = {**data, "steps": filled}
    if found and problems is None:
        first = found[0]
        error = WorkflowDefinitionError(first.message, source, first.line)
        error.column = first.column
        raise error
    if problems is not None:
        problems.extend(found)
    return {**data, "source": source}


# ---------------------------------------------------------------------------------------
# Turning pydantic errors into one readable line


_SINGULAR_TOP = {"inputs": "workflow input", "steps": "step", "outputs": "workflow output"}
_SINGULAR_NESTED = {"inputs": "input", "outputs": "output"}


def diagnose(
    exc: ValidationError,
    data: Any,
    positions: Positions,
    source: str | None,
    models: ModelsByPlace,
) -> list[Diagnostic]:
    """Every error of ``exc`` as a :class:`Diagnostic`, placed where it is in the file: an
    unknown key at the key, a missing key at its mapping, anything else at the value."""
    found: list[Diagnostic] = []
    for error in exc.errors():
        loc: Loc = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        at: Pos | None
        if isinstance(cause, Problem):
            who, _ = _where(loc, data)
            message = cause.message if who == "workflow" else f"{who}: {cause.message}"
            at = positions.value(loc + cause.loc)
        else:
            message = _describe(error, data, models)
            if error["type"] == "extra_forbidden":
                at = positions.key(loc)
            elif error["type"] == "missing":
                at = positions.value(loc[:-1])
            else:
                at = positions.value(loc)
        line, column = at if at else (None, None)
        found.append(Diagnostic(message, source, line, column))
    return found


def translate(
    exc: ValidationError,
    data: Any,
    positions: Positions,
    source: str | None,
    models: ModelsByPlace,
) -> WorkflowDefinitionError:
    """The first (in the file) of ``exc``'s errors as one error, saying how many more."""
    return first_error(diagnose(exc, data, positions, source, models), source)


def first_error(problems: list[Diagnostic], source: str | None) -> WorkflowDefinitionError:
    """The first of ``problems`` (in file order) as one error of one line, saying how many
    more there are and where to see them all."""
    ordered = sorted(problems, key=place)
    first = ordered[0]
    message = first.message
    if len(ordered) > 1:
        more = len(ordered) - 1
        command = "hivemesh validate " + (
            source if source and not source.startswith("<") else "FILE"
        )
        message += f" (and {more} more problem{'s' if more > 1 else ''}: run {command})"
    error = WorkflowDefinitionError(message, first.source or source, first.line)
    error.column = first.column
    return error


def place(problem: Diagnostic) -> tuple[bool, int, int]:
    """Sort key: file order, problems without a place last."""
    return (problem.line is None, problem.line or 0, problem.column or 0)


def _describe(error: ErrorDetails, data: Any, models: ModelsByPlace) -> str:
    kind, loc = error["type"], tuple(error["loc"])
    if kind in ("missing", "extra_forbidden") and loc:
        who, field = _where(loc[:-1], data)
        who = f"{who} '{field}'" if field else who
        if kind == "missing":
            return f"{who} is missing required key '{loc[-1]}'"
        return _unknown_key(who, str(loc[-1]), loc[:-1], models)
    if kind == "json_invalid":
        return f"not valid workflow JSON: {error['msg']}"
    who, field = _where(loc, data)
    subject = f"{who}: '{field}'" if field else who
    value = error.get("input")
    if kind == "value_error":  # our validators' messages name the field themselves
        cause = error.get("ctx", {}).get("error")
        message = str(cause) if cause is not None else error["msg"]
        return message if who == "workflow" else f"{who}: {message}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"{subject} must be a mapping, not {kind_of(value)}"
    if kind in ("list_type", "tuple_type"):
        return f"{subject} must be a list, not {kind_of(value)}"
    if kind == "string_type":
        return f"{subject} must be a string, not {kind_of(value)}"
    if kind == "too_short":
        return f"{subject} must not be empty"
    return f"{subject}: {error['msg']}"


def _where(loc: Loc, data: Any) -> tuple[str, str]:
    """Describe ``loc`` as (entity, field): ``("step 'shout' input 'text'", "value")``."""
    entity: list[str] = []
    fields: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int) and fields:
            names = _SINGULAR_NESTED if entity else _SINGULAR_TOP
            noun = names.get(fields[-1], fields[-1])
            item = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            fields.pop()
            entity.append(f"{noun} {name!r}" if isinstance(name, str) else f"{noun} #{part + 1}")
            fields = []
            node = item
        else:
            fields.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return " ".join(entity) or "workflow", ".".join(fields)


def _unknown_key(who: str, key: str, parent: Loc, models: ModelsByPlace) -> str:
    model = models.get(tuple(part for part in parent if isinstance(part, str)))
    if model is None:
        return f"{who} has unknown key {key!r}"
    allowed = [name for name in model.model_fields if name not in INTERNAL_FIELDS]
    return (
        f"{who} has unknown key {key!r}{suggest(key, allowed)} (allowed keys: {', '.join(allowed)})"
    )


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value!r})" if len(value) <= 40 else "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def listing(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names) or "none"
