"""The engine's own workflow graph: a flat, picklable list of steps.

Ray DAGs (``f.bind(...)`` nodes, ``InputNode``) are converted here without recursion, so
a statically bound chain of any length works without touching the recursion limit, and
the stored graph pickles flat (steps point to each other by task id, not by object).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ray.dag import DAGNode, FunctionNode, InputAttributeNode, InputNode

from workflows.engine import serde

OPTIONS_LABEL = "hivemesh.workflow.options"
WORKFLOW_OPTION_KEYS = ("task_id", "metadata", "catch_exceptions", "checkpoint")
RAY_DEFAULT_MAX_RETRIES = 3

StepKind = Literal["task", "sleep", "event", "tool", "template"]
OUTPUTS_STEP = "__outputs__"


@dataclass(frozen=True)
class StepRef:
    """Placeholder for another step's output inside a step's arguments."""

    task_id: str


@dataclass(frozen=True)
class InputRef:
    """Placeholder for the workflow's input (``InputNode``, ``InputNode()[k]``, ``.k``)."""

    key: int | str | None = None
    accessor: str | None = None


@dataclass(slots=True)
class StepDef:
    task_id: str
    kind: StepKind
    func: Callable[..., Any] | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    deps: tuple[str, ...]
    # None: not set by the user. A continuation's steps inherit the returning step's
    # value then (as in Ray Workflows); otherwise None means False and True respectively.
    catch_exceptions: bool | None = None
    checkpoint: bool | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    ray_options: dict[str, Any] = field(default_factory=dict)

    @property
    def max_retries(self) -> int:
        return int(self.ray_options.get("max_retries", RAY_DEFAULT_MAX_RETRIES))

    @property
    def retry_exceptions(self) -> Any:
        """False, True, or a list of exception types to retry (Ray's option)."""
        value = self.ray_options.get("retry_exceptions", False)
        return list(value) if isinstance(value, (list, tuple)) else bool(value)

    def options_record(self) -> dict[str, Any]:
        """What ``get_metadata(..., task_id)`` reports as ``task_options``."""
        record: dict[str, Any] = {
            "task_id": self.task_id,
            "catch_exceptions": bool(self.catch_exceptions),
            "checkpoint": self.checkpoint is not False,
            "max_retries": self.max_retries,
            "retry_exceptions": (
                [getattr(e, "__name__", str(e)) for e in self.retry_exceptions]
                if isinstance(self.retry_exceptions, list)
                else self.retry_exceptions
            ),
        }
        for key, value in self.ray_options.items():
            if key not in record and _jsonable(value):
                record[key] = value
        return record


# The stored form of a step: its fields by position, in this order (version 1). A field
# added to StepDef needs a new order and restore function; this one stays, for the
# graphs already stored (tests/unit/test_graph.py checks that the names match).
STEP_FIELDS_V1 = (
    "task_id",
    "kind",
    "func",
    "args",
    "kwargs",
    "deps",
    "catch_exceptions",
    "checkpoint",
    "metadata",
    "ray_options",
)


def _restore_step_v1(*values: Any) -> StepDef:
    return StepDef(**dict(zip(STEP_FIELDS_V1, values, strict=True)))


def _reduce_step(step: StepDef) -> tuple[Any, ...]:
    return _restore_step_v1, tuple([getattr(step, name) for name in STEP_FIELDS_V1])


def _reduce_ref(ref: StepRef) -> tuple[Any, ...]:
    return StepRef, (ref.task_id,)


serde.register_reducer(StepDef, _reduce_step)
serde.register_reducer(StepRef, _reduce_ref)


@dataclass
class Graph:
    steps: list[StepDef]
    output: str


# -- markers for engine-implemented steps -------------------------------------------------


def _sleep_step(duration: float) -> float:  # pragma: no cover - never executed by Ray
    raise RuntimeError("workflow.sleep() only works inside a workflow")


def _event_step(listener_cls: Any, args: Any, kwargs: Any) -> Any:  # pragma: no cover
    raise RuntimeError("workflow.wait_for_event() only works inside a workflow")


def marker_kind(func: Callable[..., Any]) -> StepKind:
    if func is _sleep_step:
        return "sleep"
    if func is _event_step:
        return "event"
    return "task"


# -- conversion -----------------------------------------------------------------------------


def split_options(bound: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(workflow options, Ray options) from a FunctionNode's bound options."""
    ray_options = dict(bound)
    labels = ray_options.pop("_labels", None)
    wf: dict[str, Any] = {}
    if isinstance(labels, dict):
        labels = dict(labels)
        raw = labels.pop(OPTIONS_LABEL, None)
        if raw is not None:
            wf = json.loads(raw)
        if labels:
            ray_options["_labels"] = labels
    return wf, ray_options


def _flag(options: dict[str, Any], key: str) -> bool | None:
    value = options.get(key)
    return None if value is None else bool(value)


def default_task_name(func: Callable[..., Any]) -> str:
    kind = marker_kind(func)
    if kind == "sleep":
        return "workflow.sleep"
    if kind == "event":
        return "workflow.wait_for_event"
    module = getattr(func, "__module__", None) or "unknown"
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", "task")
    return f"{module}.{qualname}"


class TaskIdAllocator:
    """Ray Workflows' naming: ``module.qualname``, then ``_1``, ``_2`` … for repeats."""

    def __init__(self, taken: set[str] | None = None) -> None:
        self._taken: set[str] = set(taken or ())
        self._next: dict[str, int] = {}

    def reserve(self, task_ids: Any) -> None:
        """Never hand out these ids (ones the journal already holds rows for)."""
        self._taken.update(task_ids)

    def allocate(self, base: str) -> str:
        if base not in self._taken:
            self._taken.add(base)
            return base
        n = self._next.get(base, 1)
        while f"{base}_{n}" in self._taken:
            n += 1
        self._next[base] = n + 1
        task_id = f"{base}_{n}"
        self._taken.add(task_id)
        return task_id


# argument values that cannot hold a DAG node: skipped without further checks
ATOMS = frozenset({int, float, complex, str, bytes, bool, type(None)})


def _walk(value: Any) -> Iterator[DAGNode]:
    """DAG nodes inside a bound argument (lists, tuples, dicts, sets are searched)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) in ATOMS:
            continue
        if isinstance(item, DAGNode):
            yield item
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())


def _children(node: FunctionNode, ids: dict[int, str]) -> list[DAGNode]:
    """The step nodes ``node``'s arguments refer to that are not converted yet."""
    found: list[DAGNode] = []
    for value in (*node._bound_args, *node._bound_kwargs.values()):
        if type(value) in ATOMS:
            continue
        if isinstance(value, DAGNode):
            nodes: Any = (value,)
        else:
            nodes = _walk(value)
        for child in nodes:
            if not isinstance(child, (InputNode, InputAttributeNode)) and id(child) not in ids:
                found.append(child)
    return found


def _substitute(value: Any, ids: dict[int, str], deps: dict[str, None]) -> Any:
    """``value`` with DAG nodes replaced by placeholders; the steps used go into ``deps``."""
    if type(value) in ATOMS:
        return value
    if isinstance(value, InputAttributeNode):
        return InputRef(value._key, value._accessor_method)
    if isinstance(value, InputNode):
        return InputRef()
    if isinstance(value, DAGNode):
        task_id = ids[id(value)]
        deps[task_id] = None
        return StepRef(task_id)
    if isinstance(value, list):
        return [_substitute(v, ids, deps) for v in value]
    if isinstance(value, tuple):
        return tuple(_substitute(v, ids, deps) for v in value)
    if isinstance(value, (set, frozenset)):
        return type(value)(_substitute(v, ids, deps) for v in value)
    if isinstance(value, dict):
        return {k: _substitute(v, ids, deps) for k, v in value.items()}
    return value


def _options_key(options: dict[str, Any]) -> Any:
    """A hashable key for equal options dicts (None if a value is not hashable). Types
    are part of it: ``1`` and ``True`` are equal in Python but not as options."""
    if not options:
        return ()
    try:
        key = tuple(sorted((k, _hashable(v)) for k, v in options.items()))
        hash(key)
    except TypeError:
        return None
    return key


def _hashable(value: Any) -> Any:
    """``value`` with the type of every part next to it (dicts as sorted items)."""
    if isinstance(value, dict):  # the labels
        return (dict, tuple(sorted((k, _hashable(v)) for k, v in value.items())))
    if isinstance(value, (tuple, list)):
        return (type(value), tuple(_hashable(v) for v in value))
    return (type(value), value)


def graph_from_dag(root: Any, allocator: TaskIdAllocator) -> Graph:
    """Flatten a Ray DAG into steps in dependency order (iteratively)."""
    if not isinstance(root, FunctionNode):
        raise TypeError(
            f"a workflow must be built from @ray.remote functions with .bind(); got "
            f"{type(root).__name__}"
        )
    ids: dict[int, str] = {}
    steps: list[StepDef] = []
    stack: list[tuple[DAGNode, bool]] = [(root, False)]
    # Options split once per distinct options (each node has its own dict, mostly equal):
    # the steps share the result (memory for big fan-outs)
    split_cache: dict[Any, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {}
    names: dict[int, str] = {}  # id(function) -> its default task name
    while stack:
        node, expanded = stack.pop()
        if id(node) in ids:
            continue
        if not isinstance(node, FunctionNode):
            raise TypeError(
                f"workflows support function tasks only, not {type(node).__name__} "
                "(actors and class methods cannot be workflow steps)"
            )
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node, ids))
            continue
        key = _options_key(node._bound_options)
        split = split_cache.get(key) if key is not None else None
        if split is None:
            wf_split, ray_split = split_options(node._bound_options)
            split = (wf_split, ray_split, dict(wf_split.get("metadata") or {}))
            if key is not None:
                split_cache[key] = split
        wf_opts, ray_opts, meta = split
        if ray_opts.get("num_returns", 1) != 1:
            raise ValueError(
                "workflow steps return one value: num_returns other than 1 is not supported "
                "(return a tuple instead)"
            )
        func = node._body
        task_id = wf_opts.get("task_id")
        if not task_id:
            task_id = names.get(id(func))
            if task_id is None:
                task_id = names[id(func)] = default_task_name(func)
        task_id = allocator.allocate(task_id)
        ids[id(node)] = task_id
        deps: dict[str, None] = {}  # in order of first use, each once
        args = tuple(_substitute(a, ids, deps) for a in node._bound_args)
        kwargs = {k: _substitute(v, ids, deps) for k, v in node._bound_kwargs.items()}
        steps.append(
            StepDef(
                task_id=task_id,
                kind=marker_kind(func),
                func=func,
                args=args,
                kwargs=kwargs,
                deps=tuple(deps),
                catch_exceptions=_flag(wf_opts, "catch_exceptions"),
                checkpoint=_flag(wf_opts, "checkpoint"),
                metadata=meta,
                ray_options=ray_opts,
            )
        )
    return Graph(steps, ids[id(root)])


def rename_graph(graph: Graph, allocator: TaskIdAllocator) -> Graph:
    """Give a continuation's locally named steps ids unique in the whole workflow."""
    mapping: dict[str, str] = {}
    for step in graph.steps:
        mapping[step.task_id] = allocator.allocate(step.task_id)

    def sub(value: Any) -> Any:
        if isinstance(value, StepRef):
            return StepRef(mapping[value.task_id])
        if isinstance(value, list):
            return [sub(v) for v in value]
        if isinstance(value, tuple):
            return tuple(sub(v) for v in value)
        if isinstance(value, (set, frozenset)):
            return type(value)(sub(v) for v in value)
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        return value

    renamed = []
    for step in graph.steps:
        renamed.append(
            StepDef(
                task_id=mapping[step.task_id],
                kind=step.kind,
                func=step.func,
                args=sub(step.args),
                kwargs=sub(step.kwargs),
                deps=tuple(mapping[d] for d in step.deps),
                catch_exceptions=step.catch_exceptions,
                checkpoint=step.checkpoint,
                metadata=step.metadata,
                ray_options=step.ray_options,
            )
        )
    return Graph(renamed, mapping[graph.output])


def resolve_input(ref: InputRef, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if ref.key is None:
        if len(args) == 1 and not kwargs:
            return args[0]
        if not args and not kwargs:
            raise ValueError("the workflow uses InputNode but was run without arguments")
        raise ValueError(
            "InputNode used directly needs exactly one argument; use InputNode()[i] or "
            "InputNode().name for several"
        )
    if isinstance(ref.key, int):
        return args[ref.key]
    if ref.key in kwargs:
        return kwargs[ref.key]
    if len(args) == 1:
        value = args[0]
        return value[ref.key] if ref.accessor == "__getitem__" else getattr(value, ref.key)
    raise KeyError(f"workflow input {ref.key!r} was not given")


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def graph_from_spec(spec: Any) -> Graph:
    """A YAML workflow (:class:`workflows.dsl.WorkflowSpec`) as engine steps.

    Each YAML step becomes a ``tool`` step (run by the engine's external tool runner, e.g.
    the node's scheduler); a final ``template`` step computes the workflow's outputs.
    """
    steps = [
        StepDef(
            task_id=s.name,
            kind="tool",
            func=None,
            # (a 5th member, the run options, since hivemesh 0.2: stored graphs may lack it)
            args=(
                s.tool,
                s.version,
                s.args_template(),
                [o.name for o in s.outputs],
                s.run_options(),
            ),
            kwargs={},
            deps=tuple(sorted(s.dependencies())),
            metadata={"tool": s.tool},
        )
        for s in spec.steps
    ]
    if spec.outputs:
        template: Any = {o.name: o.value for o in spec.outputs}
        from workflows.refs import find_refs

        deps = sorted({r.step for r in find_refs(template) if r.step is not None})
    else:
        template = None
        deps = [s.name for s in spec.steps]
    steps.append(
        StepDef(
            task_id=OUTPUTS_STEP,
            kind="template",
            func=None,
            args=(template,),
            kwargs={},
            deps=tuple(deps),
        )
    )
    return Graph(steps, OUTPUTS_STEP)
