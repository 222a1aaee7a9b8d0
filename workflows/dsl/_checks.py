"""The checks of a workflow definition that span its parts: unique names, references
that resolve, no dependency cycle (:func:`workflow_problems`, run by the parser and by
:class:`~workflows.dsl.WorkflowSpec`'s validator), and the steps against the tools a node
or the swarm offers (:func:`tool_problems`, :func:`check_tools`).

Each check yields every :class:`Problem` it finds, placed by its ``loc`` in the document,
so that ``hivemesh validate`` can list them all; a new part of the language adds its own
generator of problems here and to :func:`workflows.dsl.check_document`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, PydanticUserError, ValidationError

from workflows.dsl._source import Loc, Problem, kind_of, listing, suggest
from workflows.errors import UnknownToolError, WorkflowDefinitionError
from workflows.expr import ExprSyntaxError, parse_expr
from workflows.refs import find_refs
from workflows.tools import Tool, ToolRegistry, version_matches

if TYPE_CHECKING:
    from workflows.dsl._spec import StepSpec, WorkflowSpec


def unique_names(items: Iterable[Any], key: str, what: str) -> None:
    for problem in _duplicates([item.name for item in items], key, what):
        raise problem


def _duplicates(names: Iterable[Any], key: str, what: str) -> Iterator[Problem]:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name in seen:
            yield Problem(f"duplicate {what} name {name!r}", (key, index, "name"))
        seen.add(name)


def _items(value: Any) -> list[tuple[int, dict[str, Any]]]:
    """The mappings of a list in raw data, with their indexes (anything else: none)."""
    if not isinstance(value, list | tuple):
        return []
    return [(index, item) for index, item in enumerate(value) if isinstance(item, dict)]


def _names(value: Any) -> list[Any]:
    return [item.get("name") for _, item in _items(value)]


def check_workflow(spec: WorkflowSpec) -> None:
    """Raise the first problem :func:`workflow_problems` finds in ``spec``."""
    data = {  # (the parts the checks read: much cheaper than a model_dump)
        "inputs": [{"name": i.name} for i in spec.inputs],
        "steps": [_step_data(s) for s in spec.steps],
        "outputs": [{"name": o.name, "value": o.value} for o in spec.outputs],
    }
    for problem in workflow_problems(data):
        raise problem


def _step_data(step: StepSpec) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": step.name,
        "inputs": [{"name": b.name, "value": b.value} for b in step.inputs],
        "outputs": [{"name": o.name} for o in step.outputs],
    }
    if step.depends_on:
        data["depends_on"] = list(step.depends_on)
    if step.when is not None:
        data["when"] = step.when
    if step.foreach is not None:
        data["foreach"] = {"items": step.foreach.items}
    on_error = step.on_error_spec
    if on_error is not None and on_error.fallback is not None:
        inputs = [{"name": b.name, "value": b.value} for b in on_error.fallback.inputs]
        data["on_error"] = {"fallback": {"inputs": inputs}}
    elif on_error is not None:
        data["on_error"] = {"continue": on_error.continue_}
    return data


def workflow_problems(data: Mapping[str, Any]) -> Iterator[Problem]:
    """The problems that span a workflow's parts: duplicate names, references to inputs,
    steps or outputs that do not exist, and a dependency cycle. ``data`` is the workflow as
    raw data (parsed YAML, or a spec's dump): whatever has the wrong shape is skipped here,
    since the models report it, so that one typo does not hide the other problems."""
    yield from _duplicates(_names(data.get("inputs")), "inputs", "workflow input")
    yield from _duplicates(_names(data.get("steps")), "steps", "step")
    yield from _duplicates(_names(data.get("outputs")), "outputs", "workflow output")
    # (built once: per reference they would make the check quadratic in the steps)
    inputs = [name for name in _names(data.get("inputs")) if isinstance(name, str)]
    steps: dict[str, dict[str, Any]] = {}
    for _, step in _items(data.get("steps")):
        name = step.get("name")
        if isinstance(name, str):
            steps.setdefault(name, step)
    for i, step in _items(data.get("steps")):
        who = f"step {step['name']!r}" if isinstance(step.get("name"), str) else f"step #{i + 1}"
        foreach = isinstance(step.get("foreach"), dict | list | str)
        item_kinds = ("item", "index") if foreach else ()
        for j, binding in _items(step.get("inputs")):
            if "value" in binding:
                loc: Loc = ("steps", i, "inputs", j, "value")
                yield from _ref_problems(inputs, steps, binding["value"], loc, who, item_kinds)
        yield from _step_extra_problems(i, step, who, inputs, steps, item_kinds)
    for k, output in _items(data.get("outputs")):
        if "value" in output:
            name = output.get("name")
            who = (
                f"workflow output {name!r}"
                if isinstance(name, str)
                else f"workflow output #{k + 1}"
            )
            yield from _ref_problems(inputs, steps, output["value"], ("outputs", k, "value"), who)
    cycle = _find_cycle(data, steps)
    if cycle:
        index = next(i for i, step in _items(data.get("steps")) if step.get("name") == cycle[0])
        depends = steps[cycle[0]].get("depends_on")
        if len(cycle) == 2 and cycle[0] in (depends if isinstance(depends, list) else [depends]):
            message = f"step {cycle[0]!r} depends on itself (dependency cycle: "
        elif len(cycle) == 2:
            message = f"step {cycle[0]!r} references its own output (dependency cycle: "
        else:
            message = "the steps form a dependency cycle (each uses the next one's output: "
        yield Problem(message + " -> ".join(cycle) + ")", ("steps", index))


def _step_extra_problems(
    i: int,
    step: Mapping[str, Any],
    who: str,
    inputs: list[str],
    steps: Mapping[str, Mapping[str, Any]],
    item_kinds: tuple[str, ...],
) -> Iterator[Problem]:
    """The problems of a step's ``depends_on``, ``foreach``, ``when`` and ``on_error``."""
    depends = step.get("depends_on")
    if isinstance(depends, str):
        depends = [depends]
    if isinstance(depends, list):
        for k, name in enumerate(depends):
            if isinstance(name, str) and name not in steps:
                yield Problem(
                    f"{who} depends on unknown step {name!r}{suggest(name, list(steps))}",
                    ("steps", i, "depends_on", k),
                )
    foreach = step.get("foreach")
    items = foreach.get("items") if isinstance(foreach, dict) else foreach
    if isinstance(items, str):
        loc: Loc = ("steps", i, "foreach") + (("items",) if isinstance(foreach, dict) else ())
        yield from _ref_problems(inputs, steps, items, loc, who)
    when = step.get("when")
    if isinstance(when, str):
        try:
            expr = parse_expr(when)
        except ExprSyntaxError:
            expr = None  # (the model reports it)
        if expr is not None:
            refs = [f"{{{{inputs.{name}}}}}" for name in sorted(expr.inputs)]
            refs += [f"{{{{steps.{s}.outputs.{o}}}}}" for s, o in sorted(expr.steps)]
            yield from _ref_problems(inputs, steps, refs, ("steps", i, "when"), who)
            if expr.uses_item:
                yield Problem(
                    f"{who}'s 'when' uses item or index: a condition is checked once for the "
                    "whole step, before its items run",
                    ("steps", i, "when"),
                )
    on_error = step.get("on_error")
    if isinstance(on_error, dict):
        fallback = on_error.get("fallback")
        if isinstance(fallback, dict):
            for j, binding in _items(fallback.get("inputs")):
                if "value" in binding:
                    yield from _ref_problems(
                        inputs,
                        steps,
                        binding["value"],
                        ("steps", i, "on_error", "fallback", "inputs", j, "value"),
                        f"the fallback of {who}",
                        (*item_kinds, "error"),
                    )
        if isinstance(on_error.get("continue"), dict):
            yield from _ref_problems(
                inputs, steps, on_error["continue"], ("steps", i, "on_error", "continue"), who
            )


def step_dependencies(step: Mapping[str, Any]) -> set[str]:
    """Names of the steps a raw step waits for: those whose outputs it references (in its
    inputs, foreach, when or on_error) and those it names in ``depends_on`` (malformed
    parts skipped)."""
    values: list[Any] = [binding.get("value") for _, binding in _items(step.get("inputs"))]
    foreach = step.get("foreach")
    values.append(foreach.get("items") if isinstance(foreach, dict) else foreach)
    on_error = step.get("on_error")
    if isinstance(on_error, dict):
        values.append(on_error.get("continue"))
        fallback = on_error.get("fallback")
        if isinstance(fallback, dict):
            values += [b.get("value") for _, b in _items(fallback.get("inputs"))]
    found: set[str] = set()
    for value in values:
        try:
            refs = find_refs(value)
        except WorkflowDefinitionError:
            continue
        found.update(ref.step for ref in refs if ref.step is not None)
    when = step.get("when")
    if isinstance(when, str):
        with contextlib.suppress(ExprSyntaxError):
            found.update(name for name, _ in parse_expr(when).steps)
    depends = step.get("depends_on")
    if isinstance(depends, str):
        depends = [depends]
    if isinstance(depends, list):
        found.update(name for name in depends if isinstance(name, str))
    return found


def _ref_problems(
    declared_inputs: list[str],
    steps: Mapping[str, Mapping[str, Any]],
    value: Any,
    loc: Loc,
    who: str,
    allowed: tuple[str, ...] = (),
) -> Iterator[Problem]:
    try:
        refs = find_refs(value)
    except WorkflowDefinitionError as exc:
        yield Problem(f"{who} has a {exc.message}", loc)
        return
    for ref in refs:
        if ref.kind in ("item", "index", "error"):
            if ref.kind not in allowed:
                only = "an on_error fallback" if ref.kind == "error" else "a foreach step"
                yield Problem(f"{who} uses {ref}, which only {only} has", loc)
            continue
        if ref.step is None:
            if ref.name not in declared_inputs:
                yield Problem(
                    f"{who} references undeclared workflow input {ref.name!r}"
                    f"{suggest(ref.name, declared_inputs)} "
                    f"(declared inputs: {listing(declared_inputs)})",
                    loc,
                )
            continue
        target = steps.get(ref.step)
        if target is None:
            yield Problem(
                f"{who} references unknown step {ref.step!r}{suggest(ref.step, list(steps))}",
                loc,
            )
            continue
        declared_outputs = [name for name in _names(target.get("outputs")) if isinstance(name, str)]
        if declared_outputs and ref.name not in declared_outputs:
            yield Problem(
                f"{who} references output {ref.name!r} of step {ref.step!r}, which declares "
                f"only: {listing(declared_outputs)}",
                loc,
            )


def _find_cycle(
    data: Mapping[str, Any], steps: Mapping[str, Mapping[str, Any]]
) -> list[str] | None:
    """A dependency cycle as ``[a, b, ..., a]``, starting at its earliest step, or None."""
    position = {name: index for index, name in enumerate(steps)}
    deps = {
        name: sorted(step_dependencies(step) & position.keys(), key=position.__getitem__)
        for name, step in steps.items()
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


@dataclass(frozen=True)
class KnownTool:
    """A tool as far as a check knows it: its input model and outputs when its schema is
    known here (a tool only heard of in the swarm has a name and a version only)."""

    name: str
    version: str
    input_model: type[BaseModel] | None = None
    outputs: tuple[str, ...] | None = None

    @classmethod
    def of(cls, tool: Tool) -> KnownTool:
        return cls(tool.name, tool.version, tool.input_model, tuple(tool.output_model.model_fields))


class ToolCatalog:
    """The tools a workflow is checked against, and ``where`` they are (for messages):
    a node's registry, or the tools the swarm offers as a node sees them."""

    def __init__(self, tools: Iterable[KnownTool], where: str = "this node") -> None:
        self.where = where
        self._tools: dict[str, list[KnownTool]] = {}
        for known in tools:
            self._tools.setdefault(known.name, []).append(known)

    @classmethod
    def of_registry(cls, registry: ToolRegistry, where: str = "this node") -> ToolCatalog:
        return cls((KnownTool.of(tool) for tool in registry), where)

    @classmethod
    def of_swarm(
        cls, offered: Iterable[tuple[str, str]], local: ToolRegistry | None = None
    ) -> ToolCatalog:
        """The swarm's tools (name, version); a tool also installed here in the same version
        is checked against its schema too."""
        known: list[KnownTool] = []
        for name, version in offered:
            here = local.get(name, version) if local is not None and local.has(name) else None
            matches = here is not None and here.version == version
            known.append(KnownTool.of(here) if here and matches else KnownTool(name, version))
        return cls(known, "any node of the swarm")

    def names(self) -> list[str]:
        return sorted(self._tools)

    def get(self, name: str, version_spec: str | None) -> KnownTool:
        """The tool ``name`` in a version matching ``version_spec``; else
        :class:`UnknownToolError` saying what there is."""
        found = self._tools.get(name)
        if not found:
            enabled = ", ".join(self.names()) or "none"
            raise UnknownToolError(
                name,
                f"not installed or not enabled on {self.where}{suggest(name, self.names())} "
                f"(enabled tools: {enabled})",
            )
        for known in found:
            if version_matches(known.version, version_spec):
                return known
        versions = ", ".join(sorted({k.version for k in found}))
        has = "has version" if self.where == "this node" else "offers version"
        raise UnknownToolError(
            name, f"no version matching {version_spec!r} ({self.where} {has} {versions})"
        )


def check_tools(spec: WorkflowSpec, registry: ToolRegistry) -> None:
    """Check ``spec`` against ``registry``: every tool exists in a matching version, every
    step passes exactly the tool's inputs (all required ones) in values its schema accepts,
    and every declared or referenced step output is one the tool produces. Raises
    :class:`WorkflowDefinitionError` for the first problem (:func:`tool_problems` finds all).
    """
    steps = list(enumerate(spec.steps))
    outputs = [(k, o.name, o.value) for k, o in enumerate(spec.outputs)]
    for problem in tool_problems(steps, outputs, ToolCatalog.of_registry(registry)):
        index = problem.loc[1] if problem.loc[:1] == ("steps",) else None
        line = spec.steps[index].line if isinstance(index, int) else None
        raise WorkflowDefinitionError(problem.message, spec.source, line)


def tool_problems(
    steps: Iterable[tuple[int, StepSpec]],
    outputs: Iterable[tuple[int, str, Any]],
    catalog: ToolCatalog,
) -> Iterator[Problem]:
    """Every problem of ``steps`` (valid ones, with their index in the file) and the
    workflow's ``outputs`` (index, name, value) against the tools of ``catalog``."""
    produced: dict[str, tuple[str, tuple[str, ...] | None]] = {}  # step -> (tool, outputs)
    steps = list(steps)
    for i, step in steps:
        if step.package is not None:
            continue  # installed for the step where it runs: its tool is not known here
        if step.workflow is not None:
            continue  # a sub-workflow: checked against the node's registry of workflows
        try:
            tool = catalog.get(step.tool, step.version)
        except UnknownToolError as exc:
            yield Problem(f"step {step.name!r} uses {exc}", ("steps", i, "tool"))
            continue
        produced[step.name] = (tool.name, tool.outputs)
        on_error = step.on_error_spec
        if on_error is not None and on_error.fallback is not None:
            fallback = on_error.fallback
            try:
                catalog.get(fallback.tool, fallback.version)
            except UnknownToolError as exc:
                yield Problem(
                    f"the fallback of step {step.name!r} uses {exc}",
                    ("steps", i, "on_error", "fallback", "tool"),
                )
        if tool.input_model is not None:
            yield from _input_problems(i, step, tool, tool.input_model)
        for k, decl in enumerate(step.outputs):
            if tool.outputs is not None and decl.name not in tool.outputs:
                yield Problem(
                    f"step {step.name!r} declares output {decl.name!r}, but tool {tool.name!r} "
                    f"produces only: {listing(tool.outputs)}",
                    ("steps", i, "outputs", k, "name"),
                )
    consumers: list[tuple[str, Any, Loc]] = [
        (f"step {step.name!r}", binding.value, ("steps", i, "inputs", j, "value"))
        for i, step in steps
        for j, binding in enumerate(step.inputs)
    ]
    consumers += [
        (f"workflow output {name!r}", value, ("outputs", k, "value")) for k, name, value in outputs
    ]
    for who, value, loc in consumers:
        try:
            refs = find_refs(value)
        except WorkflowDefinitionError:
            continue  # (reported by the workflow's own checks)
        for ref in refs:
            if ref.step is None or ref.step not in produced:
                continue
            tool_name, names = produced[ref.step]
            if names is not None and ref.name not in names:
                yield Problem(
                    f"{who} references output {ref.name!r} of step {ref.step!r}, but tool "
                    f"{tool_name!r} produces only: {listing(names)}",
                    loc,
                )


def _input_problems(
    i: int, step: StepSpec, tool: KnownTool, model: type[BaseModel]
) -> Iterator[Problem]:
    accepted = list(model.model_fields)
    given = [binding.name for binding in step.inputs]
    for j, name in enumerate(given):
        if name not in accepted:
            yield Problem(
                f"step {step.name!r} passes unknown input {name!r} to tool {tool.name!r}"
                f"{suggest(name, accepted)} (its inputs: {listing(accepted)})",
                ("steps", i, "inputs", j, "name"),
            )
    missing = [
        name
        for name, info in model.model_fields.items()
        if info.is_required() and name not in given
    ]
    if missing:
        yield Problem(
            f"step {step.name!r} does not pass required input{'s' if len(missing) > 1 else ''}"
            f" {listing(missing)} to tool {tool.name!r}",
            ("steps", i),
        )
    # the values written out (no reference in them) must fit the tool's input schema
    literal = {}
    where: dict[str, int] = {}
    for j, binding in enumerate(step.inputs):
        if binding.name in accepted and not _has_refs(binding.value):
            literal[binding.name] = binding.value
            where[binding.name] = j
    if not literal:
        return
    try:
        model.model_validate(literal)
    except (TypeError, AttributeError, KeyError):
        return  # a third-party tool's validator that breaks: its schema says nothing here
    except ValidationError as exc:
        messages: dict[str, list[str]] = {}
        for error in exc.errors():
            field = error["loc"][0] if error["loc"] else None
            if isinstance(field, str) and field in where:
                messages.setdefault(field, []).append(_first_line(error["msg"]))
        for field, said in messages.items():
            # (one message says why; a union's one message per member only repeats 'expects')
            why = f": {said[0]}" if len(said) == 1 else ""
            yield Problem(
                f"step {step.name!r} passes {kind_of(literal[field])} as input {field!r} of "
                f"tool {tool.name!r}, which expects {_expected(model, field)}{why}",
                ("steps", i, "inputs", where[field], "value"),
            )


def _has_refs(value: Any) -> bool:
    try:
        return bool(find_refs(value))
    except WorkflowDefinitionError:
        return True  # (malformed: reported elsewhere; not checked against the schema)


def _expected(model: type[BaseModel], field: str) -> str:
    """The JSON Schema type(s) of a field, in words: ``a number``, ``a string or null``."""
    try:
        schema = model.model_json_schema().get("properties", {}).get(field, {})
    except PydanticUserError:  # (a field type with no JSON Schema)
        schema = {}
    options = schema.get("anyOf") or [schema]
    words = {
        "integer": "an integer",
        "number": "a number",
        "string": "a string",
        "boolean": "a boolean",
        "array": "a list",
        "object": "a mapping",
        "null": "null",
    }
    kinds = [words.get(str(option.get("type")), "") for option in options]
    kinds = [kind for kind in kinds if kind]
    text = " or ".join(dict.fromkeys(kinds)) or "another value"
    bounds = [
        f"{name} {schema[key]}"
        for key, name in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
        )
        if key in schema
    ]
    return text + (f" ({', '.join(bounds)})" if bounds else "")


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else text
