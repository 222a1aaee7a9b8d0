"""Converting a Ray DAG (``f.bind(...)``) into the engine's flat graph, and pickling it.

``.bind()`` needs no running Ray, so these are plain unit tests."""

from __future__ import annotations

import dataclasses
import pickle
import sys
from typing import Any

import pytest
import ray
from ray.dag import InputNode

import workflows as workflow
from workflows.engine import serde
from workflows.engine.graph import (
    STEP_FIELDS_V1,
    Graph,
    InputRef,
    StepDef,
    StepRef,
    TaskIdAllocator,
    graph_from_dag,
)


@ray.remote
def f(*args: Any, **kwargs: Any) -> Any:
    return args, kwargs


@ray.remote
def g(x: Any) -> Any:
    return x


@ray.remote
class Counter:
    def add(self, x: int) -> int:
        return x


F = f"{__name__}.f"
G = f"{__name__}.g"


def convert(dag: Any) -> Graph:
    return graph_from_dag(dag, TaskIdAllocator())


def by_id(graph: Graph) -> dict[str, StepDef]:
    return {s.task_id: s for s in graph.steps}


def test_a_long_static_chain_converts_without_recursion_in_dependency_order() -> None:
    n = sys.getrecursionlimit() * 3
    node: Any = 0
    for _ in range(n):
        node = g.bind(node)
    graph = convert(node)
    assert len(graph.steps) == n
    assert graph.steps[0].task_id == G and graph.steps[0].args == (0,)
    for prev, step in zip(graph.steps, graph.steps[1:], strict=False):
        assert step.deps == (prev.task_id,)
        assert step.args == (StepRef(prev.task_id),)
    assert graph.output == graph.steps[-1].task_id == f"{G}_{n - 1}"


def test_nodes_inside_containers_become_placeholders_and_dependencies() -> None:
    a, b = g.bind(1), g.bind(2)
    root = f.bind([a, (b, 3)], {"k": a, "set": {b}}, x=frozenset({a}), y="plain")
    graph = convert(root)
    steps = by_id(graph)
    out = steps[graph.output]
    ra, rb = StepRef(G), StepRef(f"{G}_1")
    assert {ra.task_id, rb.task_id} <= steps.keys()
    assert out.args == ([ra, (rb, 3)], {"k": ra, "set": {rb}})
    assert out.kwargs == {"x": frozenset({ra}), "y": "plain"}
    assert sorted(out.deps) == sorted({ra.task_id, rb.task_id})  # each once
    # dependencies come before the steps that read them
    order = [s.task_id for s in graph.steps]
    assert order.index(out.task_id) == len(order) - 1


def test_a_shared_node_is_one_step() -> None:
    shared = g.bind(1)
    graph = convert(f.bind(g.bind(shared), g.bind(shared)))
    assert [s.task_id for s in graph.steps].count(G) == 1
    readers = [s for s in graph.steps if s.deps == (G,)]
    assert len(readers) == 2


def test_input_nodes_become_input_placeholders() -> None:
    with InputNode() as inp:
        dag = f.bind(inp, inp[0], inp.name)
    (step,) = convert(dag).steps
    assert step.args == (InputRef(), InputRef(0, "__getitem__"), InputRef("name", "__getattr__"))
    assert step.deps == ()


def test_task_ids_follow_ray_workflows_naming() -> None:
    named = g.options(**workflow.options(task_id="mine")).bind(1)
    graph = convert(f.bind(g.bind(1), g.bind(2), named, g.bind(3)))
    assert sorted(by_id(graph)) == sorted([F, G, f"{G}_1", f"{G}_2", "mine"])


def test_options_split_once_and_shared_by_equal_options_only() -> None:
    retried = [g.options(max_retries=1).bind(i) for i in range(3)]
    truthy = g.options(max_retries=True).bind(9)
    meta = g.options(**workflow.options(metadata={"team": "a"})).bind(5)
    graph = convert(f.bind(*retried, truthy, meta))
    by_arg = {s.args: s for s in graph.steps if s.task_id != graph.output}
    first, *rest = (by_arg[(i,)] for i in range(3))
    assert first.ray_options == {"max_retries": 1}
    assert all(s.ray_options is first.ray_options for s in rest)  # one dict for all three
    odd = by_arg[(9,)]
    assert odd.ray_options == {"max_retries": True}
    assert odd.ray_options is not first.ray_options  # True is not 1 here
    tagged = by_arg[(5,)]
    assert tagged.metadata == {"team": "a"} and "_labels" not in tagged.ray_options


def test_actor_methods_are_refused_with_a_clear_error() -> None:
    counter = Counter.bind()  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="function tasks only"):
        convert(f.bind(counter.add.bind(1)))
    with pytest.raises(TypeError, match=r"@ray\.remote functions with \.bind"):
        convert(counter.add.bind(1))


def test_steps_with_several_returns_are_refused() -> None:
    with pytest.raises(ValueError, match="num_returns"):
        convert(f.options(num_returns=2).bind(1))


def test_the_stored_step_form_names_every_field() -> None:
    """A field added to StepDef must get a new stored form (see STEP_FIELDS_V1)."""
    assert sorted(STEP_FIELDS_V1) == sorted(f.name for f in dataclasses.fields(StepDef))


def test_a_graph_pickles_and_comes_back_equal() -> None:
    a = g.options(**workflow.options(catch_exceptions=True, checkpoint=False)).bind(1)
    graph = convert(f.bind([a], k={a}))
    back = serde.loads(serde.dumps(graph))
    assert back.output == graph.output and len(back.steps) == len(graph.steps)
    for got, want in zip(back.steps, graph.steps, strict=True):
        assert type(got) is StepDef
        # the step's function comes back by value (the module attribute is the remote
        # function, not it): an equal copy
        assert got.func is not None and want.func is not None
        assert got.func.__code__ == want.func.__code__
        fields = ("task_id", "kind", "args", "kwargs", "deps", "catch_exceptions")
        assert [getattr(got, k) for k in fields] == [getattr(want, k) for k in fields]
        assert (got.checkpoint, got.metadata, got.ray_options) == (
            want.checkpoint,
            want.metadata,
            want.ray_options,
        )
    # loads is plain pickle: the stored form needs nothing from the engine to be read
    assert pickle.loads(serde.dumps(graph)).output == graph.output


def test_pickles_that_name_the_engines_old_modules_still_load() -> None:
    # journals written before the engine moved into workflows.engine name its old flat
    # modules (workflows._graph, ...) in their stored graphs and errors
    old = b"cworkflows._graph\nStepRef\n(Va\ntR."
    assert serde.loads(old) == StepRef("a")
