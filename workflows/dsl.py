"""The workflow YAML DSL: parse, validate and query workflow definitions.

A workflow is a DAG of steps; each step calls one tool with arguments that may reference
workflow inputs and other steps' outputs (see :mod:`workflows.refs`). Dependencies are
implied by those references, so independent steps can run in parallel::

    id: text-and-math
    inputs:
      - name: text
        default: "hello swarm"
    steps:
      - name: shout
        tool: text.upper            # or text.upper@1.0.0
        inputs:
          - name: text
            value: "{{inputs.text}}"
    outputs:
      - name: shouted
        value: "{{steps.shout.outputs.result}}"

:func:`parse_workflow` and :func:`load_workflow` raise :class:`WorkflowDefinitionError` with
``"source:line: message"`` for every problem: YAML syntax, shape, names, references, cycles.
:func:`check_tools` additionally checks the steps against the tools a node offers.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Collection, Iterable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from workflows.errors import UnknownToolError, WorkflowDefinitionError
from workflows.refs import NAME_PATTERN, find_refs
from workflows.tools import ToolRegistry, check_tool_name, split_tool_ref

Loc = tuple[str | int, ...]
"""A position inside the parsed document: keys and list indexes from the top."""

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
_FROZEN = ConfigDict(extra="forbid", frozen=True)
_INTERNAL_FIELDS = {"source", "line"}  # filled in by the parser, never written in YAML


class _Problem(ValueError):
    """A semantic problem found by a model validator, at ``loc`` relative to that model."""

    def __init__(self, message: str, loc: Loc = ()) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"invalid {what} name {value!r}: start with a letter or digit and use only "
            "letters, digits, '_' and '-'"
        )
    return value


def _reject_mapping(value: Any, info: ValidationInfo) -> None:
    if isinstance(value, Mapping):
        raise ValueError(
            f"'{info.field_name}' must be a list of items like '- name: ...', not a mapping"
        )


def _unique_names(items: Iterable[Any], key: str, what: str) -> None:
    seen: set[str] = set()
    for index, item in enumerate(items):
        if item.name in seen:
            raise _Problem(f"duplicate {what} name {item.name!r}", (key, index, "name"))
        seen.add(item.name)


class InputSpec(BaseModel):
    """A workflow input. Without a ``default`` it is required."""

    model_config = _FROZEN

    name: str
    default: Any = None
    required: bool = True
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _required_unless_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "required" not in data:
            return {**data, "required": "default" not in data}
        return data

    @model_validator(mode="after")
    def _default_means_optional(self) -> InputSpec:
        if self.required and self.default is not None:
            raise _Problem(
                "a default makes an input optional: remove 'required: true' or the default",
                ("required",),
            )
        return self

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "input")


class ValueBinding(BaseModel):
    """An argument passed to a step's tool; ``value`` may contain references."""

    model_config = _FROZEN

    name: str
    value: Any

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "input")


class OutputDecl(BaseModel):
    """An output a step declares; other steps may reference only declared outputs."""

    model_config = _FROZEN

    name: str

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "output")


class OutputSpec(BaseModel):
    """A workflow output: a value, usually a reference to a step's output."""

    model_config = _FROZEN

    name: str
    value: Any

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "output")


class StepSpec(BaseModel):
    """One step: call ``tool`` (bare name; ``version`` from ``tool: name@version``).

    ``outputs`` is optional; when given, only those outputs may be referenced. ``line`` is
    where the step starts in its source file, when parsed from one.
    """

    model_config = _FROZEN

    name: str
    tool: str
    version: str | None = None
    inputs: tuple[ValueBinding, ...] = ()
    outputs: tuple[OutputDecl, ...] = ()
    line: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _split_tool_version(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("tool"), str) and "@" in data["tool"]:
            if data.get("version") is not None:
                raise _Problem(
                    "give the tool version either in 'tool' (name@version) or in 'version', "
                    "not both",
                    ("version",),
                )
            try:
                name, version = split_tool_ref(data["tool"])
            except ValueError as exc:
                raise _Problem(str(exc), ("tool",)) from None
            return {**data, "tool": name, "version": version}
        return data

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "step")

    @field_validator("tool")
    @classmethod
    def _valid_tool(cls, value: str) -> str:
        return check_tool_name(value)

    @field_validator("version", mode="before")
    @classmethod
    def _quoted_version(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f'version {value!r} must be a quoted string, e.g. "{value}"')
        if isinstance(value, str) and not value.strip():
            raise ValueError("version must not be empty")
        return value

    @field_validator("inputs", "outputs", mode="before")
    @classmethod
    def _list_not_mapping(cls, value: Any, info: ValidationInfo) -> Any:
        _reject_mapping(value, info)
        return value

    @model_validator(mode="after")
    def _unique(self) -> StepSpec:
        _unique_names(self.inputs, "inputs", "input")
        _unique_names(self.outputs, "outputs", "output")
        return self

    @property
    def tool_ref(self) -> str:
        """``"tool@version"``, or just the tool name."""
        return f"{self.tool}@{self.version}" if self.version else self.tool

    def dependencies(self) -> set[str]:
        """Names of the steps whose outputs this step references."""
        return {
            ref.step
            for binding in self.inputs
            for ref in find_refs(binding.value)
            if ref.step is not None
        }

    def args_template(self) -> dict[str, Any]:
        """The tool arguments, references not yet resolved."""
        return {binding.name: binding.value for binding in self.inputs}


class WorkflowSpec(BaseModel):
    """A validated workflow: names are unique, references point at declared things and the
    steps form a DAG. Build it with :func:`parse_workflow` / :func:`load_workflow`."""

    model_config = _FROZEN

    id: str
    name: str
    description: str | None = None
    inputs: tuple[InputSpec, ...] = ()
    steps: tuple[StepSpec, ...]
    outputs: tuple[OutputSpec, ...] = ()
    source: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _name_defaults_to_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name") is None:
            # with an invalid id, "" stands in so that only the id is reported
            return {**data, "name": data["id"] if isinstance(data.get("id"), str) else ""}
        return data

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not _ID_RE.match(value):
            raise ValueError(
                f"invalid workflow id {value!r}: start with a letter or digit and use only "
                "letters, digits, '.', '_' and '-'"
            )
        return value

    @field_validator("inputs", "steps", "outputs", mode="before")
    @classmethod
    def _list_not_mapping(cls, value: Any, info: ValidationInfo) -> Any:
        _reject_mapping(value, info)
        if info.field_name == "steps" and isinstance(value, list | tuple) and not value:
            raise ValueError("'steps' must list at least one step")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> WorkflowSpec:
        _check_workflow(self)
        return self

    def step(self, name: str) -> StepSpec:
        """The step called ``name`` (``KeyError`` if there is none)."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"workflow {self.id!r} has no step {name!r}")

    def tools(self) -> set[tuple[str, str | None]]:
        """The ``(tool, version)`` pairs the steps use."""
        return {(step.tool, step.version) for step in self.steps}

    def bind_inputs(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The workflow's input values: ``given`` plus defaults.

        Raises :class:`WorkflowDefinitionError` for an undeclared or a missing required input.
        """
        declared = [spec.name for spec in self.inputs]
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise WorkflowDefinitionError(
                f"workflow {self.id!r} has no input {unknown[0]!r}"
                f"{_suggest(unknown[0], declared)} (its inputs: {_listing(declared)})",
                self.source,
            )
        bound: dict[str, Any] = {}
        missing: list[str] = []
        for spec in self.inputs:
            if spec.name in given:
                bound[spec.name] = given[spec.name]
            elif spec.required:
                missing.append(spec.name)
            else:
                bound[spec.name] = copy.deepcopy(spec.default)
        if missing:
            raise WorkflowDefinitionError(
                f"workflow {self.id!r} needs a value for required input"
                f"{'s' if len(missing) > 1 else ''} {_listing(missing)}",
                self.source,
            )
        return bound

    def ready_steps(self, finished: Collection[str], started: Collection[str]) -> list[StepSpec]:
        """Steps neither finished nor started whose dependencies have all finished, in file
        order."""
        return [
            step
            for step in self.steps
            if step.name not in finished
            and step.name not in started
            and all(dep in finished for dep in step.dependencies())
        ]

    def topological_order(self) -> list[str]:
        """Step names in an order that respects dependencies; among steps that could go next,
        the one earliest in the file comes first."""
        order: list[str] = []
        while len(order) < len(self.steps):
            ready = self.ready_steps(finished=order, started=())
            if not ready:  # cannot happen for a validated spec; never loop forever
                raise WorkflowDefinitionError("the steps form a dependency cycle", self.source)
            order.append(ready[0].name)
        return order

    def to_json(self) -> str:
        """JSON text that :meth:`from_json` turns back into an equal spec."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkflowSpec:
        """The spec stored by :meth:`to_json`; :class:`WorkflowDefinitionError` if invalid."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            try:
                data = json.loads(text)
            except ValueError:
                data = None
            source = data.get("source") if isinstance(data, dict) else None
            raise _translate(exc, data, {}, source if isinstance(source, str) else None) from None


# ---------------------------------------------------------------------------------------
# Semantic checks (run by WorkflowSpec's validator)


def _check_workflow(spec: WorkflowSpec) -> None:
    _unique_names(spec.inputs, "inputs", "workflow input")
    _unique_names(spec.steps, "steps", "step")
    _unique_names(spec.outputs, "outputs", "workflow output")
    for i, step in enumerate(spec.steps):
        for j, binding in enumerate(step.inputs):
            loc: Loc = ("steps", i, "inputs", j, "value")
            _check_refs(spec, binding.value, loc, f"step {step.name!r}")
    for k, output in enumerate(spec.outputs):
        _check_refs(spec, output.value, ("outputs", k, "value"), f"workflow output {output.name!r}")
    cycle = _find_cycle(spec)
    if cycle:
        index = [s.name for s in spec.steps].index(cycle[0])
        if len(cycle) == 2:
            message = f"step {cycle[0]!r} references its own output (dependency cycle: "
        else:
            message = "the steps form a dependency cycle (each uses the next one's output: "
        raise _Problem(message + " -> ".join(cycle) + ")", ("steps", index))


def _check_refs(spec: WorkflowSpec, value: Any, loc: Loc, who: str) -> None:
    try:
        refs = find_refs(value)
    except WorkflowDefinitionError as exc:
        raise _Problem(f"{who} has a {exc.message}", loc) from None
    declared_inputs = [i.name for i in spec.inputs]
    steps = {s.name: s for s in spec.steps}
    for ref in refs:
        if ref.step is None:
            if ref.name not in declared_inputs:
                raise _Problem(
                    f"{who} references undeclared workflow input {ref.name!r}"
                    f"{_suggest(ref.name, declared_inputs)} "
                    f"(declared inputs: {_listing(declared_inputs)})",
                    loc,
                )
            continue
        target = steps.get(ref.step)
        if target is None:
            raise _Problem(
                f"{who} references unknown step {ref.step!r}{_suggest(ref.step, list(steps))}",
                loc,
            )
        declared_outputs = [o.name for o in target.outputs]
        if declared_outputs and ref.name not in declared_outputs:
            raise _Problem(
                f"{who} references output {ref.name!r} of step {ref.step!r}, which declares "
                f"only: {_listing(declared_outputs)}",
                loc,
            )


def _find_cycle(spec: WorkflowSpec) -> list[str] | None:
    """A dependency cycle as ``[a, b, ..., a]``, starting at its earliest step, or None."""
    position = {step.name: index for index, step in enumerate(spec.steps)}
    deps = {
        step.name: sorted(step.dependencies() & position.keys(), key=position.__getitem__)
        for step in spec.steps
    }
    done: set[str] = set()
    for root in position:
        if root in done:
            continue
        path: list[str] = [root]
        on_path = {root}
        pending = [iter(deps[root])]
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                finished = path.pop()
                done.add(finished)
                on_path.discard(finished)
                pending.pop()
                continue
            if nxt in on_path:
                members = path[path.index(nxt) :]
                first = min(range(len(members)), key=lambda i: position[members[i]])
                members = members[first:] + members[:first]
                return [*members, members[0]]
            if nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                pending.append(iter(deps[nxt]))
    return None


# ---------------------------------------------------------------------------------------
# Checks against the tools a node offers


def check_tools(spec: WorkflowSpec, registry: ToolRegistry) -> None:
    """Check ``spec`` against ``registry``: every tool exists in a matching version, every
    step passes exactly the tool's inputs (all required ones), and every declared or
    referenced step output is one the tool produces. Raises :class:`WorkflowDefinitionError`.
    """
    produced: dict[str, list[str]] = {}
    for step in spec.steps:
        try:
            tool = registry.get(step.tool, step.version)
        except UnknownToolError as exc:
            raise WorkflowDefinitionError(
                f"step {step.name!r} uses {exc}", spec.source, step.line
            ) from None
        accepted = list(tool.input_model.model_fields)
        given = [binding.name for binding in step.inputs]
        for name in given:
            if name not in accepted:
                raise WorkflowDefinitionError(
                    f"step {step.name!r} passes unknown input {name!r} to tool {tool.name!r}"
                    f"{_suggest(name, accepted)} (its inputs: {_listing(accepted)})",
                    spec.source,
                    step.line,
                )
        missing = [
            name
            for name, info in tool.input_model.model_fields.items()
            if info.is_required() and name not in given
        ]
        if missing:
            raise WorkflowDefinitionError(
                f"step {step.name!r} does not pass required input{'s' if len(missing) > 1 else ''}"
                f" {_listing(missing)} to tool {tool.name!r}",
                spec.source,
                step.line,
            )
        produced[step.name] = list(tool.output_model.model_fields)
        for decl in step.outputs:
            if decl.name not in produced[step.name]:
                raise WorkflowDefinitionError(
                    f"step {step.name!r} declares output {decl.name!r}, but tool {tool.name!r} "
                    f"produces only: {_listing(produced[step.name])}",
                    spec.source,
                    step.line,
                )
    consumers: list[tuple[str, Any, int | None]] = [
        (f"step {step.name!r}", binding.value, step.line)
        for step in spec.steps
        for binding in step.inputs
    ]
    consumers += [(f"workflow output {o.name!r}", o.value, None) for o in spec.outputs]
    for who, value, line in consumers:
        for ref in find_refs(value):
            if ref.step is not None and ref.name not in produced[ref.step]:
                tool_name = spec.step(ref.step).tool
                raise WorkflowDefinitionError(
                    f"{who} references output {ref.name!r} of step {ref.step!r}, but tool "
                    f"{tool_name!r} produces only: {_listing(produced[ref.step])}",
                    spec.source,
                    line,
                )


# ---------------------------------------------------------------------------------------
# Parsing


def load_workflow(path: str | PathLike[str]) -> WorkflowSpec:
    """Read and parse a workflow file; errors name the file as given."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise WorkflowDefinitionError("the file is not UTF-8 text", source) from None
    except OSError as exc:
        raise WorkflowDefinitionError(
            f"cannot read the workflow file: {exc.strerror or exc}", source
        ) from None
    return parse_workflow(text, source=source)


def parse_workflow(text: str, *, source: str = "<string>") -> WorkflowSpec:
    """Parse and validate workflow YAML. ``source`` names it in error messages."""
    data, lines = _load_yaml(text, source)
    if data is None:
        raise WorkflowDefinitionError(
            "the workflow is empty: it needs at least an 'id' and a list of 'steps'", source
        )
    if not isinstance(data, dict):
        raise WorkflowDefinitionError(
            f"a workflow must be a mapping with 'id' and 'steps' keys, not {_kind(data)}",
            source,
            lines.get((), 1),
        )
    data = _with_internal_fields(data, lines, source)
    try:
        return WorkflowSpec.model_validate(data)
    except ValidationError as exc:
        raise _translate(exc, data, lines, source) from None


def _load_yaml(text: str, source: str) -> tuple[Any, dict[Loc, int]]:
    """Parse YAML safely; also return the line of every key and list item."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[Loc, int] = {}
        # before constructing: construction flattens merge keys ('<<') in place
        _record_lines(node, (), lines, set(), source)
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, source) from None
    except yaml.YAMLError as exc:
        raise WorkflowDefinitionError(f"invalid YAML: {exc}", source) from None
    finally:
        loader.dispose()


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


def _with_internal_fields(
    data: dict[str, Any], lines: dict[Loc, int], source: str
) -> dict[str, Any]:
    """Reject ``source``/``line`` written by hand, then fill them in."""
    if "source" in data:
        raise WorkflowDefinitionError(
            _unknown_key("workflow", "source", ()), source, lines.get(("source",))
        )
    steps = data.get("steps")
    if isinstance(steps, list):
        filled: list[Any] = []
        for index, step in enumerate(steps):
            if isinstance(step, dict):
                if "line" in step:
                    who, _ = _where(("steps", index), data)
                    raise WorkflowDefinitionError(
                        _unknown_key(who, "line", ("steps", index)),
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
_MODELS: dict[tuple[str, ...], type[BaseModel]] = {
    (): WorkflowSpec,
    ("inputs",): InputSpec,
    ("steps",): StepSpec,
    ("outputs",): OutputSpec,
    ("steps", "inputs"): ValueBinding,
    ("steps", "outputs"): OutputDecl,
}


def _translate(
    exc: ValidationError, data: Any, lines: dict[Loc, int], source: str | None
) -> WorkflowDefinitionError:
    problems: list[tuple[int | None, str]] = []
    for error in exc.errors():
        loc: Loc = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _Problem):
            who, _ = _where(loc, data)
            message = cause.message if who == "workflow" else f"{who}: {cause.message}"
            loc = loc + cause.loc
        else:
            message = _describe(error, data)
        problems.append((_line_for(loc, lines), message))
    problems.sort(key=lambda p: (p[0] is None, p[0] or 0))
    line, message = problems[0]
    if len(problems) > 1:
        more = len(problems) - 1
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return WorkflowDefinitionError(message, source, line)


def _describe(error: ErrorDetails, data: Any) -> str:
    kind, loc = error["type"], tuple(error["loc"])
    if kind in ("missing", "extra_forbidden") and loc:
        who, field = _where(loc[:-1], data)
        who = f"{who} '{field}'" if field else who
        if kind == "missing":
            return f"{who} is missing required key '{loc[-1]}'"
        return _unknown_key(who, str(loc[-1]), loc[:-1])
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
        return f"{subject} must be a mapping, not {_kind(value)}"
    if kind in ("list_type", "tuple_type"):
        return f"{subject} must be a list, not {_kind(value)}"
    if kind == "string_type":
        return f"{subject} must be a string, not {_kind(value)}"
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


def _unknown_key(who: str, key: str, parent: Loc) -> str:
    model = _MODELS.get(tuple(part for part in parent if isinstance(part, str)))
    if model is None:
        return f"{who} has unknown key {key!r}"
    allowed = [name for name in model.model_fields if name not in _INTERNAL_FIELDS]
    return (
        f"{who} has unknown key {key!r}{_suggest(key, allowed)} "
        f"(allowed keys: {', '.join(allowed)})"
    )


def _line_for(loc: Loc, lines: Mapping[Loc, int]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


def _kind(value: Any) -> str:
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


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _listing(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names) or "none"
