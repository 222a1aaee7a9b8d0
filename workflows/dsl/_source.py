"""Where a YAML workflow's problems are: line-tracking YAML loading, and the translation
of pydantic's validation errors into ``"source:line: message"`` for the person who wrote
the file."""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable, Mapping
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
) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML within ``limits`` into JSON-like data; also return the line of every key
    and list item. Errors are :class:`WorkflowDefinitionError` (or its
    :class:`WorkflowLimitError`) of one line."""
    parser: Any = None
    try:
        parser = new_parser(text)  # (PyYAML's own reader checks every character here)
        node = BoundedComposer(source, limits, deadline=deadline, clock=clock).compose(parser)
        if node is None:
            return None, {}
        lines: dict[Loc, int] = {}
        # before constructing: construction flattens merge keys ('<<') in place
        _record_lines(node, (), lines, set(), source)
        return yaml.constructor.SafeConstructor().construct_document(node), lines
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
    return WorkflowDefinitionError(
        f"invalid YAML: {message}", source, mark.line + 1 if mark else None
    )


def _record_lines(
    node: yaml.Node, loc: Loc, lines: dict[Loc, int], seen: set[int], source: str
) -> None:
    if id(node) in seen:  # an alias: lines were recorded where the anchor is
        return
    seen.add(id(node))
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        has_merge = any(key.tag == "tag:yaml.org,2002:merge" for key, _ in node.value)
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in first_line and not has_merge:
                raise WorkflowDefinitionError(
                    f"duplicate key {key!r} (first given on line {first_line[key]})", source, line
                )
            first_line.setdefault(key, line)
            lines[(*loc, key)] = line
            _record_lines(value_node, (*loc, key), lines, seen, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*loc, index), lines, seen, source)


def with_internal_fields(
    data: dict[str, Any], lines: dict[Loc, int], source: str, models: ModelsByPlace
) -> dict[str, Any]:
    """Reject ``source``/``line`` written by hand, then fill them in."""
    if "source" in data:
        raise WorkflowDefinitionError(
            _unknown_key("workflow", "source", (), models), source, lines.get(("source",))
        )
    steps = data.get("steps")
    if isinstance(steps, list):
        filled: list[Any] = []
        for index, step in enumerate(steps):
            if isinstance(step, dict):
                if "line" in step:
                    who, _ = _where(("steps", index), data)
                    raise WorkflowDefinitionError(
                        _unknown_key(who, "line", ("steps", index), models),
                        source,
                        lines.get(("steps", index, "line")),
                    )
                step = {**step, "line": lines.get(("steps", index))}
            filled.append(step)
        data = {**data, "steps": filled}
    return {**data, "source": source}


# ---------------------------------------------------------------------------------------
# Turning pydantic errors into one readable line


_SINGULAR_TOP = {"inputs": "workflow input", "steps": "step", "outputs": "workflow output"}
_SINGULAR_NESTED = {"inputs": "input", "outputs": "output"}


def translate(
    exc: ValidationError,
    data: Any,
    lines: dict[Loc, int],
    source: str | None,
    models: ModelsByPlace,
) -> WorkflowDefinitionError:
    problems: list[tuple[int | None, str]] = []
    for error in exc.errors():
        loc: Loc = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, Problem):
            who, _ = _where(loc, data)
            message = cause.message if who == "workflow" else f"{who}: {cause.message}"
            loc = loc + cause.loc
        else:
            message = _describe(error, data, models)
        problems.append((_line_for(loc, lines), message))
    problems.sort(key=lambda p: (p[0] is None, p[0] or 0))
    line, message = problems[0]
    if len(problems) > 1:
        more = len(problems) - 1
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return WorkflowDefinitionError(message, source, line)


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


def _line_for(loc: Loc, lines: Mapping[Loc, int]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


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
