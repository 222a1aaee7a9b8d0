"""The checks of a workflow definition that span its parts: unique names, references
that resolve, no dependency cycle (run by :class:`~workflows.dsl.WorkflowSpec`'s
validator), and the steps against the tools a node offers (:func:`check_tools`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from workflows.dsl._source import Loc, Problem, listing, suggest
from workflows.errors import UnknownToolError, WorkflowDefinitionError
from workflows.refs import find_refs
from workflows.tools import ToolRegistry

if TYPE_CHECKING:
    from workflows.dsl._spec import StepSpec, WorkflowSpec


def unique_names(items: Iterable[Any], key: str, what: str) -> None:
    seen: set[str] = set()
    for index, item in enumerate(items):
        if item.name in seen:
            raise Problem(f"duplicate {what} name {item.name!r}", (key, index, "name"))
        seen.add(item.name)


def check_workflow(spec: WorkflowSpec) -> None:
    unique_names(spec.inputs, "inputs", "workflow input")
    unique_names(spec.steps, "steps", "step")
    unique_names(spec.outputs, "outputs", "workflow output")
    # (built once: per reference they would make the check quadratic in the steps)
    inputs = [i.name for i in spec.inputs]
    steps = {s.name: s for s in spec.steps}
    for i, step in enumerate(spec.steps):
        for j, binding in enumerate(step.inputs):
            loc: Loc = ("steps", i, "inputs", j, "value")
            _check_refs(inputs, steps, binding.value, loc, f"step {step.name!r}")
    for k, output in enumerate(spec.outputs):
        who = f"workflow output {output.name!r}"
        _check_refs(inputs, steps, output.value, ("outputs", k, "value"), who)
    cycle = _find_cycle(spec)
    if cycle:
        index = [s.name for s in spec.steps].index(cycle[0])
        if len(cycle) == 2:
            message = f"step {cycle[0]!r} references its own output (dependency cycle: "
        else:
            message = "the steps form a dependency cycle (each uses the next one's output: "
        raise Problem(message + " -> ".join(cycle) + ")", ("steps", index))


def _check_refs(
    declared_inputs: list[str], steps: dict[str, StepSpec], value: Any, loc: Loc, who: str
) -> None:
    try:
        refs = find_refs(value)
    except WorkflowDefinitionError as exc:
        raise Problem(f"{who} has a {exc.message}", loc) from None
    for ref in refs:
        if ref.step is None:
            if ref.name not in declared_inputs:
                raise Problem(
                    f"{who} references undeclared workflow input {ref.name!r}"
                    f"{suggest(ref.name, declared_inputs)} "
                    f"(declared inputs: {listing(declared_inputs)})",
                    loc,
                )
            continue
        target = steps.get(ref.step)
        if target is None:
            raise Problem(
                f"{who} references unknown step {ref.step!r}{suggest(ref.step, list(steps))}",
                loc,
            )
        declared_outputs = [o.name for o in target.outputs]
        if declared_outputs and ref.name not in declared_outputs:
            raise Problem(
                f"{who} references output {ref.name!r} of step {ref.step!r}, which declares "
                f"only: {listing(declared_outputs)}",
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
                    f"{suggest(name, accepted)} (its inputs: {listing(accepted)})",
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
                f" {listing(missing)} to tool {tool.name!r}",
                spec.source,
                step.line,
            )
        produced[step.name] = list(tool.output_model.model_fields)
        for decl in step.outputs:
            if decl.name not in produced[step.name]:
                raise WorkflowDefinitionError(
                    f"step {step.name!r} declares output {decl.name!r}, but tool {tool.name!r} "
                    f"produces only: {listing(produced[step.name])}",
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
                    f"{tool_name!r} produces only: {listing(produced[ref.step])}",
                    spec.source,
                    line,
                )
