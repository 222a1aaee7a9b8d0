"""References: finding them in nested values and resolving them with types preserved."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from workflows.errors import ReferenceResolutionError, WorkflowDefinitionError
from workflows.refs import Ref, find_refs, parse_ref, resolve

INPUTS: dict[str, Any] = {"text": "hello swarm", "factor": 3, "tags": ["a", "b"], "none": None}
STEP_OUTPUTS: dict[str, dict[str, Any]] = {
    "count": {"result": 2},
    "shout": {"result": "HELLO SWARM"},
    "stats": {"result": {"words": 2, "ratio": 0.5}},
}


def test_find_refs_in_nested_values():
    value = {
        "a": "{{inputs.text}}",
        "b": ["x", {"c": "n={{ steps.count.outputs.result }} and {{inputs.factor}}"}],
        "d": 5,
        "e": ("{{steps.shout.outputs.result}}",),
    }
    assert find_refs(value) == [
        Ref("input", "text"),
        Ref("step", "result", "count"),
        Ref("input", "factor"),
        Ref("step", "result", "shout"),
    ]


def test_find_refs_without_references():
    assert find_refs("plain text with { braces }") == []
    assert find_refs(42) == []
    assert find_refs(None) == []


def test_ref_accessors_and_text():
    step_ref = Ref("step", "result", "count")
    assert step_ref.output == "result"
    assert str(step_ref) == "{{steps.count.outputs.result}}"
    input_ref = Ref("input", "text")
    assert input_ref.output is None
    assert input_ref.step is None
    assert str(input_ref) == "{{inputs.text}}"
    assert parse_ref(" steps.my-step.outputs.out_1 ") == Ref("step", "out_1", "my-step")


@pytest.mark.parametrize(
    "text",
    [
        "{{steps.x}}",
        "{{steps.x.result}}",
        "{{steps.x.outputs}}",
        "{{inputs}}",
        "{{input.text}}",
        "{{inputs.text.extra}}",
        "{{ }}",
        "prefix {{outputs.x}} suffix",
    ],
)
def test_malformed_references(text: str):
    with pytest.raises(WorkflowDefinitionError, match="malformed reference"):
        find_refs({"nested": [text]})
    with pytest.raises(ReferenceResolutionError, match="malformed reference"):
        resolve(text, INPUTS, STEP_OUTPUTS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("{{inputs.factor}}", 3),
        ("  {{ inputs.factor }}\n", 3),
        ("{{inputs.tags}}", ["a", "b"]),
        ("{{inputs.none}}", None),
        ("{{steps.count.outputs.result}}", 2),
        ("{{steps.stats.outputs.result}}", {"words": 2, "ratio": 0.5}),
        ("{{inputs.text}}", "hello swarm"),
    ],
)
def test_exact_reference_keeps_the_type(value: str, expected: Any):
    resolved = resolve(value, INPUTS, STEP_OUTPUTS)
    assert resolved == expected
    assert type(resolved) is type(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("say {{inputs.text}}!", "say hello swarm!"),
        ("{{inputs.factor}}x", "3x"),
        ("words: {{steps.count.outputs.result}}", "words: 2"),
        ("{{inputs.tags}} / {{inputs.none}}", '["a", "b"] / null'),
        ("{{steps.stats.outputs.result}} ", {"words": 2, "ratio": 0.5}),
        ("{{inputs.factor}}{{inputs.factor}}", "33"),
        ("no references", "no references"),
    ],
)
def test_interpolation(value: str, expected: Any):
    assert resolve(value, INPUTS, STEP_OUTPUTS) == expected


def test_resolve_nested_structures():
    value = {
        "values": ["{{steps.count.outputs.result}}", "{{inputs.factor}}", 1.5],
        "label": "{{steps.shout.outputs.result}} x{{inputs.factor}}",
        "pair": ("{{inputs.factor}}", None),
        "deep": {"deeper": [{"x": "{{inputs.tags}}"}]},
    }
    assert resolve(value, INPUTS, STEP_OUTPUTS) == {
        "values": [2, 3, 1.5],
        "label": "HELLO SWARM x3",
        "pair": (3, None),
        "deep": {"deeper": [{"x": ["a", "b"]}]},
    }


def test_resolve_leaves_the_input_alone():
    value = {"values": ["{{inputs.factor}}"]}
    resolve(value, INPUTS, STEP_OUTPUTS)
    assert value == {"values": ["{{inputs.factor}}"]}


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        ("{{inputs.missing}}", ["{{inputs.missing}}", "workflow input 'missing' has no value"]),
        (
            "x {{steps.later.outputs.result}}",
            ["{{steps.later.outputs.result}}", "step 'later' has no outputs yet"],
        ),
        (
            ["{{steps.count.outputs.total}}"],
            ["{{steps.count.outputs.total}}", "no output 'total'", "its outputs: result"],
        ),
    ],
)
def test_missing_values_name_the_reference(value: Any, fragments: list[str]):
    with pytest.raises(ReferenceResolutionError) as info:
        resolve(value, INPUTS, STEP_OUTPUTS)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert info.value.ref == fragments[0]
    copy = pickle.loads(pickle.dumps(info.value))
    assert (str(copy), copy.ref) == (str(info.value), info.value.ref)
