"""Tools: the decorator, invocation and validation, the entry-point registry, versions."""

from __future__ import annotations

import json
import logging
import pickle
import re
from importlib.metadata import EntryPoint
from typing import Any

import pytest
from pydantic import BaseModel

from workflows.errors import (
    ReferenceResolutionError,
    ToolConfigError,
    ToolError,
    ToolExecutionError,
    ToolInputError,
    ToolOutputError,
    UnknownToolError,
    WorkflowDefinitionError,
    WorkflowError,
)
from workflows.tools import (
    ENTRY_POINT_GROUP,
    Tool,
    ToolRegistry,
    split_tool_ref,
    tool,
    version_matches,
)

BUILTINS = [
    "math.add",
    "math.multiply",
    "math.sum_list",
    "text.lower",
    "text.reverse",
    "text.upper",
    "text.word_count",
    "util.echo",
    "util.fail",
    "util.fill",
    "util.flaky",
    "util.sleep",
    "util.step_key",
]


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    return ToolRegistry.from_entry_points("all")


def _ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)


# --- built-in tools ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("text.upper", {"text": "Hello swarm"}, "HELLO SWARM"),
        ("text.lower", {"text": "Hello Swarm"}, "hello swarm"),
        ("text.reverse", {"text": "abc d"}, "d cba"),
        ("text.word_count", {"text": "  the quick\tbrown\nfox "}, 4),
        ("text.word_count", {"text": ""}, 0),
        ("math.add", {"a": 2, "b": 3}, 5),
        ("math.add", {"a": 2.5, "b": 1}, 3.5),
        ("math.multiply", {"a": 4, "b": 3}, 12),
        ("math.multiply", {"a": 0.5, "b": 3}, 1.5),
        ("math.sum_list", {"values": [1, 2, 3]}, 6),
        ("math.sum_list", {"values": [1, 0.5]}, 1.5),
        ("math.sum_list", {"values": []}, 0),
        ("util.echo", {"value": {"nested": [1, "two", None]}}, {"nested": [1, "two", None]}),
        ("util.echo", {"value": None}, None),
        ("util.sleep", {"seconds": 0}, 0.0),
    ],
)
def test_builtin_invoke(registry: ToolRegistry, name: str, args: dict[str, Any], expected: Any):
    outputs = registry.get(name).invoke(args)
    assert outputs == {"result": expected}
    assert type(outputs["result"]) is type(expected)


def test_int_inputs_give_int_results(registry: ToolRegistry):
    assert registry.get("math.add").invoke({"a": 2, "b": 3})["result"] == 5
    assert isinstance(registry.get("math.add").invoke({"a": 2, "b": 3})["result"], int)
    assert isinstance(registry.get("math.multiply").invoke({"a": 2, "b": 3})["result"], int)
    assert isinstance(registry.get("math.sum_list").invoke({"values": [1, 2]})["result"], int)
    assert isinstance(registry.get("text.word_count").invoke({"text": "a b"})["result"], int)


def test_builtins_have_docstring_descriptions_and_version(registry: ToolRegistry):
    for item in registry:
        assert item.version == "1.0.0"
        assert item.description, item.name
        assert item.fn.__doc__ and item.description == item.fn.__doc__.strip().splitlines()[0]


@pytest.mark.parametrize(
    ("name", "args", "fragment"),
    [
        ("math.add", {"a": 1}, "missing required input 'b'"),
        ("math.add", {"a": 1, "b": 2, "c": 3}, "unexpected input 'c'"),
        ("math.add", {"a": "one", "b": 2}, "input 'a'"),
        ("math.add", {"a": True, "b": 2}, "input 'a'"),
        ("math.sum_list", {"values": [1, "x"]}, "input 'values'"),
        ("text.upper", {"text": 5}, "input 'text'"),
        ("text.upper", {}, "missing required input 'text'"),
        ("util.sleep", {"seconds": -1}, "input 'seconds'"),
        ("util.sleep", {"seconds": 3601}, "input 'seconds'"),
    ],
)
def test_invalid_input_is_tool_input_error(
    registry: ToolRegistry, name: str, args: dict[str, Any], fragment: str
):
    with pytest.raises(ToolInputError) as info:
        registry.get(name).invoke(args)
    assert info.value.tool == name
    assert f"invalid input for tool {name!r}" in str(info.value)
    assert fragment in str(info.value)


def test_non_mapping_arguments_are_rejected(registry: ToolRegistry):
    with pytest.raises(ToolInputError, match="must be a mapping"):
        registry.get("text.upper").invoke(["hello"])  # type: ignore[arg-type]


# --- the decorator ------------------------------------------------------------------------


def test_decorator_builds_models_from_the_signature():
    @tool("demo.greet", version="2.1.0")
    def greet(name: str, punctuation: str = "!") -> str:
        """Greet someone.

        More text that is not part of the description.
        """
        return f"hello {name}{punctuation}"

    assert isinstance(greet, Tool)
    assert greet.group == "demo"
    assert greet.description == "Greet someone."
    assert greet.invoke({"name": "ada"}) == {"result": "hello ada!"}
    assert greet.invoke({"name": "ada", "punctuation": "?"}) == {"result": "hello ada?"}
    schema = greet.input_schema()
    assert schema["required"] == ["name"]
    assert schema["additionalProperties"] is False
    assert greet.output_schema()["required"] == ["result"]
    spec = greet.spec()
    assert set(spec) == {
        "name",
        "version",
        "description",
        "input_schema",
        "output_schema",
        "deterministic",
    }
    assert spec["version"] == "2.1.0" and spec["deterministic"] is False  # unless declared
    json.dumps(spec)


def test_decorator_with_model_output_accepts_dict_or_model():
    class Stats(BaseModel):
        length: int
        first: str | None

    @tool("demo.stats", output=Stats, description="Stats of a text.")
    def stats(text: str) -> dict[str, Any]:
        return {"length": len(text), "first": text[:1] or None}

    @tool("demo.stats_model", output=Stats)
    def stats_model(text: str) -> Stats:
        return Stats(length=len(text), first=None)

    assert stats.description == "Stats of a text."
    assert stats.invoke({"text": "abc"}) == {"length": 3, "first": "a"}
    assert stats_model.invoke({"text": "abcd"}) == {"length": 4, "first": None}
    assert stats.output_schema()["title"] == "Stats"


def test_function_exception_becomes_tool_execution_error():
    @tool("demo.divide")
    def divide(a: int, b: int) -> float:
        return a / b

    with pytest.raises(ToolExecutionError) as info:
        divide.invoke({"a": 1, "b": 0})
    assert str(info.value) == "tool 'demo.divide' failed: ZeroDivisionError: division by zero"
    assert info.value.exc_type == "ZeroDivisionError"
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_invalid_return_value_is_tool_output_error():
    @tool("demo.liar", output=int)
    def liar() -> Any:
        return "not a number"

    class Out(BaseModel):
        value: int

    @tool("demo.wrong_shape", output=Out)
    def wrong_shape() -> Any:
        return {"other": 1}

    with pytest.raises(
        ToolOutputError, match=re.escape("tool 'demo.liar' returned invalid output")
    ):
        liar.invoke({})
    with pytest.raises(ToolOutputError, match=re.escape("demo.wrong_shape")):
        wrong_shape.invoke({})


@pytest.mark.parametrize("name", ["upper", "Text.upper", "text.", ".upper", "text.up-per", "1.a"])
def test_invalid_tool_names_are_rejected(name: str):
    with pytest.raises(ToolConfigError, match="invalid tool name"):
        tool(name)
    with pytest.raises(ValueError):
        split_tool_ref(name)


def test_unsupported_signatures_are_rejected():
    def star(*values: int) -> int:
        return sum(values)

    with pytest.raises(ToolConfigError, match="'values' must be a named parameter"):
        tool("demo.star")(star)


def test_invalid_version_is_rejected():
    with pytest.raises(ToolConfigError, match="invalid version"):

        @tool("demo.v", version="latest")
        def v() -> None:
            return None


# --- the registry ---------------------------------------------------------------------------


def test_registry_loads_all_builtins_from_entry_points(registry: ToolRegistry):
    assert registry.names() == BUILTINS
    assert len(registry) == len(BUILTINS)
    assert registry.groups() == ["math", "text", "util"]
    assert [t.name for t in registry] == BUILTINS
    assert [s["name"] for s in registry.specs()] == BUILTINS
    json.dumps(registry.specs())


@pytest.mark.parametrize(
    ("selection", "groups", "count"),
    [
        ("all", ["math", "text", "util"], 13),
        ("text", ["text"], 4),
        ("text,math", ["math", "text"], 7),
        (" text , math ", ["math", "text"], 7),
        (["text", "math"], ["math", "text"], 7),
        (["util"], ["util"], 6),
        ("none", [], 0),
        ("", [], 0),
        ([], [], 0),
    ],
)
def test_registry_group_selection(selection: str | list[str], groups: list[str], count: int):
    selected = ToolRegistry.from_entry_points(selection)
    assert selected.groups() == groups
    assert len(selected) == count


def test_unknown_group_lists_available_groups():
    with pytest.raises(ValueError) as info:
        ToolRegistry.from_entry_points("text,nope")
    message = str(info.value)
    assert "unknown tool group 'nope'" in message
    assert "available groups: math, text, util" in message
    assert isinstance(info.value, ToolConfigError)
    assert isinstance(info.value, WorkflowError)


def test_broken_entry_points_are_logged_and_skipped(caplog: pytest.LogCaptureFixture):
    eps = [
        _ep("text.upper", "workflows.tools.text:upper"),
        _ep("bad.missing", "no_such_module_for_hivemesh_tests:thing"),
        _ep("bad.not_a_tool", "os:sep"),
        _ep("bad.renamed", "workflows.tools.text:lower"),
    ]
    with caplog.at_level(logging.WARNING, logger="workflows.tools._registry"):
        loaded = ToolRegistry.from_entry_points("all", eps=eps)
    assert loaded.names() == ["text.upper"]
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert "'bad.missing'" in warnings and "failed to load" in warnings
    assert "'bad.not_a_tool'" in warnings and "not a workflows.tools.Tool" in warnings
    assert "'bad.renamed'" in warnings and "'text.lower'" in warnings


def test_duplicate_tool_names_are_rejected(registry: ToolRegistry):
    upper = registry.get("text.upper")
    with pytest.raises(ValueError, match=re.escape("duplicate tool name 'text.upper'")):
        ToolRegistry([upper, upper])


def test_get_unknown_tool(registry: ToolRegistry):
    with pytest.raises(UnknownToolError) as info:
        registry.get("nope.tool")
    assert info.value.tool == "nope.tool"
    assert str(info.value).startswith("unknown tool 'nope.tool'")
    assert not registry.has("nope.tool")
    assert "nope.tool" not in registry


def test_get_with_versions(registry: ToolRegistry):
    upper = registry.get("text.upper")
    assert registry.get("text.upper", "1") is upper
    assert registry.get("text.upper", "1.0.0") is upper
    assert registry.get("text.upper@1.0") is upper
    assert registry.get("text.upper", "*") is upper
    assert registry.has("text.upper", "1.0")
    assert not registry.has("text.upper", "2")
    with pytest.raises(UnknownToolError) as info:
        registry.get("text.upper", "2.0")
    assert info.value.tool == "text.upper"
    assert "no version matching '2.0'" in str(info.value)
    assert "1.0.0" in str(info.value)


@pytest.mark.parametrize(
    ("version", "spec", "expected"),
    [
        ("1.0.0", None, True),
        ("1.0.0", "", True),
        ("1.0.0", "*", True),
        ("1.0.0", "1.0.0", True),
        ("1.0.0", "1.0.1", False),
        ("1.0.0", "1", True),
        ("1.4.2", "1", True),
        ("10.0.0", "1", False),
        ("1.2.3", "1.2", True),
        ("1.20.0", "1.2", False),
        ("1.2", "1.2.0", False),
        ("2.0.0", "1", False),
    ],
)
def test_version_matches(version: str, spec: str | None, expected: bool):
    assert version_matches(version, spec) is expected


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("text.upper", ("text.upper", None)),
        ("text.upper@1.0", ("text.upper", "1.0")),
        ("my_group.sub.tool@2", ("my_group.sub.tool", "2")),
    ],
)
def test_split_tool_ref(ref: str, expected: tuple[str, str | None]):
    assert split_tool_ref(ref) == expected


def test_split_tool_ref_rejects_empty_version():
    with pytest.raises(ToolConfigError, match="empty version"):
        split_tool_ref("text.upper@")


# --- errors cross process boundaries ------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        WorkflowError("boom"),
        WorkflowDefinitionError("bad step", "flow.yaml", 12),
        ReferenceResolutionError("no value", "{{inputs.x}}"),
        ToolError("tool trouble", "text.upper"),
        UnknownToolError("nope.tool"),
        UnknownToolError("text.upper", "no version matching '2'"),
        ToolInputError("bad input", "math.add"),
        ToolOutputError("bad output", "math.add"),
        ToolExecutionError("tool 'x.y' failed: KeyError: 'k'", "x.y", "KeyError"),
        ToolConfigError("unknown tool group 'nope'"),
    ],
)
def test_errors_are_picklable(error: Exception):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__


def test_a_tool_reads_its_calls_idempotency_key() -> None:
    from workflows.tools import current_call, tool_call
    from workflows.tools.util import step_key

    assert current_call() is None
    assert step_key.invoke({}) == {"result": ""}  # outside a workflow step
    with tool_call("wf-1/charge"):
        call = current_call()
        assert call is not None and call.idempotency_key == "wf-1/charge"
        assert step_key.invoke({}) == {"result": "wf-1/charge"}
    assert current_call() is None
    with tool_call(None):
        assert current_call() is None
