"""Checking a peer's step outputs: against a local tool's model, or a card's JSON schema."""

from __future__ import annotations

from typing import Any

import pytest

from node.outputs import check_outputs
from workflows.tools import ToolRegistry

TOOLS = ToolRegistry.from_entry_points("all")


def schema_of(name: str) -> dict[str, Any]:
    return TOOLS.get(name).output_schema()


@pytest.mark.parametrize(
    ("tool", "outputs"),
    [
        ("text.upper", {"result": "HELLO"}),
        ("text.word_count", {"result": 3}),
        ("text.word_count", {"result": 3.0}),  # JSON has one number type
        ("math.add", {"result": 2.5}),
        ("util.echo", {"result": {"any": ["thing", None]}}),
        ("util.sleep", {"result": 1}),
    ],
)
def test_valid_outputs_pass_both_checks(tool: str, outputs: dict[str, Any]) -> None:
    assert check_outputs(outputs, schema=schema_of(tool)) is None
    if tool != "text.word_count" or isinstance(outputs["result"], int):
        assert check_outputs(outputs, model=TOOLS.get(tool).output_model) is None


@pytest.mark.parametrize(
    ("tool", "outputs", "problem"),
    [
        ("text.upper", {"result": 5}, "result: expected string, got number"),
        ("text.upper", {}, "outputs: missing 'result'"),
        ("text.upper", {"result": "X", "extra": 1}, "unexpected member 'extra'"),
        ("text.word_count", {"result": 2.5}, "result: expected integer, got number"),
        ("text.word_count", {"result": True}, "result: expected integer, got boolean"),
        ("math.add", {"result": "5"}, "result: matches none of the allowed forms"),
    ],
)
def test_invalid_outputs_fail_the_cards_schema(
    tool: str, outputs: dict[str, Any], problem: str
) -> None:
    found = check_outputs(outputs, schema=schema_of(tool))
    assert found is not None and problem in found


@pytest.mark.parametrize(
    ("tool", "outputs"),
    [
        ("text.upper", {"result": 5}),
        ("text.upper", {}),
        ("text.upper", {"result": "X", "extra": 1}),
        ("math.add", {"result": "5"}),  # strict: no coercion of a string to a number
        ("text.word_count", {"result": "3"}),
    ],
)
def test_invalid_outputs_fail_the_local_model(tool: str, outputs: dict[str, Any]) -> None:
    assert check_outputs(outputs, model=TOOLS.get(tool).output_model) is not None


def test_the_model_wins_over_the_schema() -> None:
    model = TOOLS.get("text.upper").output_model
    assert check_outputs({"result": 5}, model=model, schema={}) is not None
    assert check_outputs({"result": "X"}, model=model, schema={"type": "array"}) is None


def test_no_schema_checks_nothing() -> None:
    assert check_outputs({"anything": 1}) is None
    assert check_outputs({"anything": 1}, schema={}) is None


def test_schema_keywords() -> None:
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 0, "exclusiveMaximum": 10},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}, "maxItems": 2},
            "kind": {"enum": ["a", "b"]},
            "pair": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "null"}]},
            "one": {"oneOf": [{"type": "integer"}, {"type": "number"}]},
            "name": {"type": ["string", "null"], "minLength": 2},
        },
        "additionalProperties": {"type": "boolean"},
        "$defs": {"Tag": {"type": "string", "maxLength": 3}},
    }
    ok = {"n": 9, "tags": ["ab"], "kind": "a", "pair": ["x", None], "name": None, "flag": True}
    assert check_outputs(ok, schema=schema) is None
    cases = [
        ({"n": -1}, "n: must be >= 0"),
        ({"n": 10}, "n: must be < 10"),
        ({"tags": ["abcd"]}, "tags[0]: at most 3 characters"),
        ({"tags": ["a", "b", "c"]}, "tags: at most 2 items"),
        ({"kind": "c"}, "kind: must be one of"),
        ({"pair": ["x", 1]}, "pair[1]: expected null"),
        ({"one": 5}, "must match exactly one allowed form, matches 2"),
        ({"name": "x"}, "name: at least 2 characters"),
        ({"flag": "yes"}, "flag: expected boolean"),
    ]
    for outputs, problem in cases:
        found = check_outputs(outputs, schema=schema)
        assert found is not None and problem in found, (outputs, found)


def test_hostile_schemas_are_bounded() -> None:
    """The schema comes from the peer: loops and blow-ups end in a failed check."""
    looping = {"$ref": "#"}
    assert "too deeply" in (check_outputs({"x": 1}, schema=looping) or "")
    branches: dict[str, Any] = {"type": "integer"}
    for _ in range(40):  # each level doubles the work
        branches = {"anyOf": [branches, branches], "type": "integer"}
    assert "too complex" in (
        check_outputs({"v": 1}, schema={"additionalProperties": branches}) or ""
    )
    assert "unresolvable" in (check_outputs({}, schema={"$ref": "http://x/y"}) or "")
    # a regular expression is not evaluated (it could stall the node)
    assert (
        check_outputs({"s": "a" * 50}, schema={"additionalProperties": {"pattern": "(a+)+$"}})
        is None
    )
