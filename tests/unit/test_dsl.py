"""The workflow DSL: parsing, validation errors with line numbers, scheduling helpers."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest

import workflows
from workflows.dsl import (
    StepSpec,
    WorkflowSpec,
    check_tools,
    load_workflow,
    parse_workflow,
)
from workflows.errors import WorkflowDefinitionError
from workflows.refs import resolve
from workflows.tools import ToolRegistry

EXAMPLES = Path(workflows.__file__).parent / "examples"

FLOW = dedent(
    """\
    id: demo
    inputs:
      - name: text
        default: hello swarm
      - name: factor
    steps:
      - name: shout
        tool: text.upper@1.0
        inputs:
          - name: text
            value: "{{inputs.text}}"
        outputs:
          - name: result
      - name: count
        tool: text.word_count
        inputs:
          - name: text
            value: "{{ inputs.text }}"
      - name: scaled
        tool: math.multiply
        inputs:
          - name: a
            value: "{{steps.count.outputs.result}}"
          - name: b
            value: "{{inputs.factor}}"
      - name: label
        tool: util.echo
        inputs:
          - name: value
            value: ["{{steps.shout.outputs.result}}", "{{steps.scaled.outputs.result}}"]
    outputs:
      - name: label
        value: "{{steps.label.outputs.result}}"
    """
)


@pytest.fixture(scope="module")
def registry() -> ToolRegistry:
    return ToolRegistry.from_entry_points("all")


@pytest.fixture
def flow() -> WorkflowSpec:
    return parse_workflow(FLOW, source="flow.yaml")


def run_in_order(
    spec: WorkflowSpec, registry: ToolRegistry, given: dict[str, Any]
) -> dict[str, Any]:
    """A tiny sequential runner: enough to check that the examples compute what they say."""
    inputs = spec.bind_inputs(given)
    outputs: dict[str, dict[str, Any]] = {}
    for name in spec.topological_order():
        step = spec.step(name)
        args = resolve(step.args_template(), inputs, outputs)
        outputs[name] = registry.get(step.tool, step.version).invoke(args)
    return {o.name: resolve(o.value, inputs, outputs) for o in spec.outputs}


# --- the examples ---------------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["text_math.yaml", "word_stats.yaml"])
def test_examples_parse_and_use_existing_tools(filename: str, registry: ToolRegistry):
    spec = load_workflow(EXAMPLES / filename)
    assert spec.source == str(EXAMPLES / filename)
    check_tools(spec, registry)
    for name, version in spec.tools():
        assert registry.has(name, version)
    assert {name.split(".")[0] for name, _ in spec.tools()} >= {"text", "math"}
    assert WorkflowSpec.from_json(spec.to_json()) == spec


def test_text_math_example(registry: ToolRegistry):
    spec = load_workflow(EXAMPLES / "text_math.yaml")
    assert [s.name for s in spec.ready_steps(finished=(), started=())] == ["shout", "count"]
    assert run_in_order(spec, registry, {}) == {
        "shouted": "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
        "words": 9,
        "scaled": 27,
        "reversed": "GOD YZAL EHT REVO SPMUJ XOF NWORB KCIUQ EHT",
    }
    assert run_in_order(spec, registry, {"text": "a b", "factor": 10})["scaled"] == 20


def test_word_stats_example(registry: ToolRegistry):
    spec = load_workflow(EXAMPLES / "word_stats.yaml")
    assert [s.name for s in spec.ready_steps(finished=(), started=())] == [
        "lowered",
        "body_words",
    ]
    result = run_in_order(spec, registry, {"title": "One Two", "body": "three four five"})
    assert result == {
        "title": "one two",
        "total": 5,
        "weighted": 7,
        "summary": "title: 2 words, body: 3 words",
    }


# --- the parsed model -----------------------------------------------------------------------


def test_parsed_fields(flow: WorkflowSpec):
    assert flow.id == "demo"
    assert flow.name == "demo"  # defaults to the id
    assert flow.source == "flow.yaml"
    shout = flow.step("shout")
    assert (shout.tool, shout.version, shout.tool_ref) == ("text.upper", "1.0", "text.upper@1.0")
    assert shout.line == 7
    assert [s.line for s in flow.steps] == [7, 14, 19, 26]
    assert flow.step("count").version is None
    assert flow.tools() == {
        ("text.upper", "1.0"),
        ("text.word_count", None),
        ("math.multiply", None),
        ("util.echo", None),
    }
    assert flow.inputs[0].required is False
    assert flow.inputs[1].required is True
    with pytest.raises(KeyError, match="no step 'nope'"):
        flow.step("nope")


def test_dependencies_and_args_template(flow: WorkflowSpec):
    assert flow.step("shout").dependencies() == set()
    assert flow.step("scaled").dependencies() == {"count"}
    assert flow.step("label").dependencies() == {"shout", "scaled"}
    assert flow.step("scaled").args_template() == {
        "a": "{{steps.count.outputs.result}}",
        "b": "{{inputs.factor}}",
    }


def test_ready_steps(flow: WorkflowSpec):
    def names(steps: list[StepSpec]) -> list[str]:
        return [s.name for s in steps]

    assert names(flow.ready_steps(finished=(), started=())) == ["shout", "count"]
    assert names(flow.ready_steps(finished=(), started={"shout"})) == ["count"]
    assert names(flow.ready_steps(finished={"count"}, started={"shout", "count"})) == ["scaled"]
    assert names(flow.ready_steps(finished={"shout", "count"}, started={"shout", "count"})) == [
        "scaled"
    ]
    everything_but_label = {"shout", "count", "scaled"}
    assert names(flow.ready_steps(everything_but_label, everything_but_label)) == ["label"]
    assert flow.ready_steps(finished={s.name for s in flow.steps}, started=()) == []


def test_topological_order_follows_dependencies_then_file_order():
    spec = parse_workflow(
        dedent(
            """\
            id: order
            steps:
              - name: last
                tool: util.echo
                inputs:
                  - name: value
                    value: "{{steps.middle.outputs.result}}"
              - name: middle
                tool: util.echo
                inputs:
                  - name: value
                    value: "{{steps.first.outputs.result}}"
              - name: first
                tool: util.echo
                inputs:
                  - name: value
                    value: 1
              - name: alone
                tool: util.echo
                inputs:
                  - name: value
                    value: 2
            """
        )
    )
    assert spec.topological_order() == ["first", "middle", "last", "alone"]


def test_json_round_trip(flow: WorkflowSpec):
    text = flow.to_json()
    again = WorkflowSpec.from_json(text)
    assert again == flow
    assert again.step("shout").line == 7
    assert again.inputs[1].required is True
    assert again.inputs[0].required is False


def test_from_json_rejects_invalid_specs():
    with pytest.raises(WorkflowDefinitionError, match="not valid workflow JSON"):
        WorkflowSpec.from_json("{not json")
    with pytest.raises(WorkflowDefinitionError, match="references unknown step 'b'"):
        WorkflowSpec.from_json(
            '{"id": "x", "steps": [{"name": "a", "tool": "text.upper", '
            '"inputs": [{"name": "text", "value": "{{steps.b.outputs.result}}"}]}]}'
        )


def test_bind_inputs(flow: WorkflowSpec):
    assert flow.bind_inputs({"factor": 2}) == {"text": "hello swarm", "factor": 2}
    assert flow.bind_inputs({"factor": 2, "text": "x"}) == {"text": "x", "factor": 2}
    with pytest.raises(WorkflowDefinitionError) as missing:
        flow.bind_inputs({})
    assert str(missing.value) == (
        "flow.yaml: workflow 'demo' needs a value for required input 'factor'"
    )
    with pytest.raises(WorkflowDefinitionError) as unknown:
        flow.bind_inputs({"factor": 1, "txt": "x"})
    assert "workflow 'demo' has no input 'txt' (did you mean 'text'?)" in str(unknown.value)


def test_bind_inputs_copies_mutable_defaults():
    spec = parse_workflow(
        "id: x\ninputs:\n  - name: xs\n    default: [1]\n"
        "steps:\n  - name: a\n    tool: util.echo\n    inputs:\n"
        "      - name: value\n        value: '{{inputs.xs}}'\n"
    )
    spec.bind_inputs({})["xs"].append(2)
    assert spec.bind_inputs({}) == {"xs": [1]}


def test_load_workflow_errors_name_the_file(tmp_path: Path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(WorkflowDefinitionError, match="cannot read the workflow file"):
        load_workflow(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: x\nsteps:\n  - name: a\n    tool: text.upper\n    tol: 1\n")
    with pytest.raises(WorkflowDefinitionError) as info:
        load_workflow(broken)
    assert str(info.value).startswith(f"{broken}:5: step 'a' has unknown key 'tol'")
    assert (info.value.source, info.value.line) == (str(broken), 5)


# --- definition errors, each with its line ------------------------------------------------

STEP_A = "  - name: a\n    tool: text.upper\n"

DEFINITION_ERRORS: list[tuple[str, str, str]] = [
    (
        "yaml syntax",
        "id: x\nsteps:\n  - name: a\n    tool: [text.upper\n",
        "flow.yaml:5: invalid YAML: ",
    ),
    ("yaml indentation", "id: x\n steps: 1\n", "flow.yaml:2: invalid YAML: "),
    (
        "empty file",
        "",
        "flow.yaml:1: the workflow is empty: it needs at least an 'id' and a list of 'steps'",
    ),
    ("only comments", "# nothing here\n", "flow.yaml:1: the workflow is empty"),
    (
        "top level list",
        "- id: x\n",
        "flow.yaml:1: a workflow must be a mapping with 'id' and 'steps' keys, not a list",
    ),
    ("top level string", "hello\n", "flow.yaml:1: a workflow must be a mapping"),
    ("missing id", "steps:\n" + STEP_A, "flow.yaml:1: workflow is missing required key 'id'"),
    ("missing steps", "id: x\n", "flow.yaml:1: workflow is missing required key 'steps'"),
    ("empty steps", "id: x\nsteps: []\n", "flow.yaml:2: 'steps' must list at least one step"),
    (
        "steps not a list",
        "id: x\nsteps: shout\n",
        "flow.yaml:2: workflow: 'steps' must be a list, not a string ('shout')",
    ),
    (
        "unknown top-level key",
        "id: x\nstep: 1\nsteps:\n" + STEP_A,
        "flow.yaml:2: workflow has unknown key 'step' (did you mean 'steps'?) "
        "(allowed keys: id, name, description, inputs, steps, outputs, run)",
    ),
    (
        "unknown step key",
        "id: x\nsteps:\n  - name: a\n    tool: text.upper\n    retry: 3\n",
        "flow.yaml:5: step 'a' has unknown key 'retry'",
    ),
    (
        "missing step key",
        "id: x\nsteps:\n  - name: a\n    inputs: []\n",
        "flow.yaml:3: step 'a' is missing required key 'tool'",
    ),
    (
        "step not a mapping",
        "id: x\nsteps:\n  - text.upper\n",
        "flow.yaml:3: step #1 must be a mapping, not a string ('text.upper')",
    ),
    (
        "binding without value",
        "id: x\nsteps:\n  - name: a\n    tool: text.upper\n    inputs:\n      - name: text\n",
        "flow.yaml:6: step 'a' input 'text' is missing required key 'value'",
    ),
    (
        "inputs as a mapping",
        "id: x\nsteps:\n  - name: a\n    tool: text.upper\n    inputs:\n      text: hi\n",
        "flow.yaml:5: step 'a': 'inputs' must be a list of items like '- name: ...'",
    ),
    (
        "line is not a user key",
        "id: x\nsteps:\n  - name: a\n    tool: text.upper\n    line: 3\n",
        "flow.yaml:5: step 'a' has unknown key 'line'",
    ),
    (
        "duplicate yaml key",
        "id: x\nid: y\nsteps:\n  - name: a\n    tool: text.upper\n",
        "flow.yaml:2: duplicate key 'id' (first given on line 1)",
    ),
    (
        "invalid workflow id",
        "id: a b\nsteps:\n" + STEP_A,
        "flow.yaml:1: invalid workflow id 'a b'",
    ),
    (
        "invalid step name",
        "id: x\nsteps:\n  - name: a.b\n    tool: text.upper\n",
        "flow.yaml:3: step 'a.b': invalid step name 'a.b'",
    ),
    (
        "duplicate step names",
        "id: x\nsteps:\n" + STEP_A + STEP_A,
        "flow.yaml:5: duplicate step name 'a'",
    ),
    (
        "duplicate input names",
        "id: x\ninputs:\n  - name: t\n  - name: t\nsteps:\n" + STEP_A,
        "flow.yaml:4: duplicate workflow input name 't'",
    ),
    (
        "duplicate output names",
        "id: x\nsteps:\n" + STEP_A + "outputs:\n  - name: o\n    value: 1\n"
        "  - name: o\n    value: 2\n",
        "flow.yaml:8: duplicate workflow output name 'o'",
    ),
    (
        "duplicate step input names",
        "id: x\nsteps:\n" + STEP_A + "    inputs:\n      - name: text\n        value: 1\n"
        "      - name: text\n        value: 2\n",
        "flow.yaml:8: step 'a': duplicate input name 'text'",
    ),
    (
        "unknown step",
        dedent(
            """\
            id: x
            steps:
              - name: shout
                tool: text.upper
                inputs:
                  - name: text
                    value: hi
              - name: count
                tool: text.word_count
                inputs:
                  - name: text
                    value: "{{steps.shout2.outputs.result}}"
            """
        ),
        "flow.yaml:12: step 'count' references unknown step 'shout2' (did you mean 'shout'?)",
    ),
    (
        "undeclared step output",
        dedent(
            """\
            id: x
            steps:
              - name: shout
                tool: text.upper
                outputs:
                  - name: result
              - name: count
                tool: text.word_count
                inputs:
                  - name: text
                    value: "{{steps.shout.outputs.res}}"
            """
        ),
        "flow.yaml:11: step 'count' references output 'res' of step 'shout', which declares "
        "only: 'result'",
    ),
    (
        "undeclared workflow input",
        dedent(
            """\
            id: x
            inputs:
              - name: text
            steps:
              - name: shout
                tool: text.upper
                inputs:
                  - name: text
                    value: "{{inputs.txt}}"
            """
        ),
        "flow.yaml:9: step 'shout' references undeclared workflow input 'txt'",
    ),
    (
        "workflow output references unknown step",
        "id: x\nsteps:\n" + STEP_A + "outputs:\n  - name: o\n    value: '{{steps.b.outputs.r}}'\n",
        "flow.yaml:7: workflow output 'o' references unknown step 'b'",
    ),
    (
        "malformed reference",
        "id: x\nsteps:\n" + STEP_A + "    inputs:\n      - name: text\n"
        "        value: 'say {{steps.x}}'\n",
        "flow.yaml:7: step 'a' has a malformed reference '{{steps.x}}'",
    ),
    (
        "malformed nested reference",
        "id: x\nsteps:\n" + STEP_A + "    inputs:\n      - name: text\n"
        "        value:\n          - ok\n          - '{{inputs}}'\n",
        "flow.yaml:7: step 'a' has a malformed reference '{{inputs}}'",
    ),
    (
        "self reference",
        "id: x\nsteps:\n" + STEP_A + "    inputs:\n      - name: text\n"
        "        value: '{{steps.a.outputs.result}}'\n",
        "flow.yaml:3: step 'a' references its own output (dependency cycle: a -> a)",
    ),
    (
        "cycle",
        dedent(
            """\
            id: x
            steps:
              - name: first
                tool: util.echo
                inputs:
                  - name: value
                    value: 1
              - name: a
                tool: util.echo
                inputs:
                  - name: value
                    value: "{{steps.c.outputs.result}}"
              - name: b
                tool: util.echo
                inputs:
                  - name: value
                    value: "{{steps.a.outputs.result}}"
              - name: c
                tool: util.echo
                inputs:
                  - name: value
                    value: "{{steps.b.outputs.result}}"
            """
        ),
        "flow.yaml:8: the steps form a dependency cycle (each uses the next one's output: "
        "a -> c -> b -> a)",
    ),
    (
        "bad tool name",
        "id: x\nsteps:\n  - name: a\n    tool: Upper\n",
        "flow.yaml:4: step 'a': invalid tool name 'Upper'",
    ),
    (
        "empty tool version",
        "id: x\nsteps:\n  - name: a\n    tool: text.upper@\n",
        "flow.yaml:4: step 'a': tool reference 'text.upper@' has an empty version",
    ),
    (
        "unquoted numeric version",
        "id: x\nsteps:\n  - name: a\n    tool: text.upper\n    version: 1.0\n",
        "flow.yaml:5: step 'a': version 1.0 must be a quoted string",
    ),
    (
        "version given twice",
        "id: x\nsteps:\n  - name: a\n    tool: text.upper@1\n    version: '1'\n",
        "flow.yaml:5: step 'a': give the tool version either in 'tool'",
    ),
    (
        "required input with default",
        "id: x\ninputs:\n  - name: t\n    default: 1\n    required: true\nsteps:\n" + STEP_A,
        "flow.yaml:5: workflow input 't': a default makes an input optional",
    ),
    (
        "several problems",
        "id: x\nsteps:\n  - name: a\n  - name: b\n",
        "flow.yaml:3: step 'a' is missing required key 'tool' (and 1 more problem: run "
        "hivemesh validate flow.yaml)",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [(text, expected) for _, text, expected in DEFINITION_ERRORS],
    ids=[case for case, _, _ in DEFINITION_ERRORS],
)
def test_definition_errors_have_source_and_line(text: str, expected: str):
    with pytest.raises(WorkflowDefinitionError) as info:
        parse_workflow(text, source="flow.yaml")
    assert str(info.value).startswith(expected), str(info.value)
    assert "pydantic" not in str(info.value)
    assert "\n" not in str(info.value)
    copy = pickle.loads(pickle.dumps(info.value))
    assert (str(copy), copy.source, copy.line) == (
        str(info.value),
        info.value.source,
        info.value.line,
    )


def test_yaml_anchors_and_merge_keys_work():
    spec = parse_workflow(
        dedent(
            """\
            id: anchors
            steps:
              - &base
                name: a
                tool: text.upper
                inputs:
                  - name: text
                    value: hi
              - <<: *base
                name: b
            """
        )
    )
    assert [(s.name, s.tool, s.line) for s in spec.steps] == [
        ("a", "text.upper", 3),
        ("b", "text.upper", 9),
    ]


def test_unsafe_yaml_tags_are_rejected():
    with pytest.raises(
        WorkflowDefinitionError,
        match=re.escape("flow.yaml:1: unsupported YAML tag '!!python/object/apply:os.system'"),
    ):
        parse_workflow("id: !!python/object/apply:os.system [echo]\n", source="flow.yaml")


# --- checks against the registry ----------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (
            "  - name: a\n    tool: text.shout\n",
            "flow.yaml:3: step 'a' uses unknown tool 'text.shout'",
        ),
        (
            "  - name: a\n    tool: text.upper@2\n",
            "flow.yaml:3: step 'a' uses unknown tool 'text.upper': no version matching '2'",
        ),
        (
            "  - name: a\n    tool: text.upper\n    inputs:\n      - name: txt\n        value: x\n",
            "flow.yaml:3: step 'a' passes unknown input 'txt' to tool 'text.upper' "
            "(did you mean 'text'?)",
        ),
        (
            "  - name: a\n    tool: math.add\n    inputs:\n      - name: a\n        value: 1\n",
            "flow.yaml:3: step 'a' does not pass required input 'b' to tool 'math.add'",
        ),
        (
            "  - name: a\n    tool: util.echo\n    inputs:\n      - name: value\n        value: 1\n"
            "    outputs:\n      - name: value\n",
            "flow.yaml:3: step 'a' declares output 'value', but tool 'util.echo' produces only: "
            "'result'",
        ),
        (
            "  - name: a\n    tool: util.echo\n    inputs:\n      - name: value\n        value: 1\n"
            "  - name: b\n    tool: util.echo\n    inputs:\n      - name: value\n"
            "        value: '{{steps.a.outputs.value}}'\n",
            "flow.yaml:8: step 'b' references output 'value' of step 'a', but tool 'util.echo' "
            "produces only: 'result'",
        ),
    ],
)
def test_check_tools_errors(step: str, expected: str, registry: ToolRegistry):
    spec = parse_workflow("id: x\nsteps:\n" + step, source="flow.yaml")
    with pytest.raises(WorkflowDefinitionError) as info:
        check_tools(spec, registry)
    assert str(info.value).startswith(expected), str(info.value)


def test_check_tools_respects_the_selected_groups():
    spec = load_workflow(EXAMPLES / "text_math.yaml")
    check_tools(spec, ToolRegistry.from_entry_points("text,math"))
    with pytest.raises(WorkflowDefinitionError, match=re.escape("unknown tool 'math.multiply'")):
        check_tools(spec, ToolRegistry.from_entry_points("text"))


PEER = "12D3KooWBsa4ZrY9mNuLpxoQ7Lq2cfXt5hdeF7b3PkWgsmcR8Y1z"


def test_placement_peers_and_verify_replicas_become_run_options() -> None:
    spec = parse_workflow(
        "id: x\nsteps:\n  - name: a\n    tool: math.add\n"
        f"    placement: {{peers: [{PEER}]}}\n    verify: {{replicas: 3}}\n"
    )
    step = spec.steps[0]
    assert step.run_options() == {"peers": [PEER], "replicas": 3}
    plain = parse_workflow("id: y\nsteps:\n  - name: a\n    tool: math.add\n").steps[0]
    assert plain.run_options() == {}


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("30s", 30.0), ("5m", 300.0), ("1.5h", 5400.0), ("250ms", 0.25), (45, 45.0), ("0", 0.0)],
)
def test_wait_for_provider_is_a_duration_that_becomes_a_run_option(
    given: object, seconds: float
) -> None:
    spec = parse_workflow(
        f"id: x\nsteps:\n  - name: a\n    tool: math.add\n    wait_for_provider: {given}\n"
    )
    assert spec.steps[0].wait_for_provider == seconds
    assert spec.steps[0].run_options() == {"provider_wait_s": seconds}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("wait_for_provider: soon", "wait_for_provider must be a duration such as 30s or 5m"),
        ("wait_for_provider: -5", "must be between 0s and 7 days"),
        ("wait_for_provider: 8d", "must be a duration such as 30s"),
        ("wait_for_provider: 700000", "must be between 0s and 7 days"),
        ("wait_for_provider: true", "must be a duration such as 30s"),
        ("placement: {peers: []}", "'placement.peers' must not be empty"),
        ("placement: {peers: nope}", "must be a list of peer ids"),
        ('placement: {peers: ["not an id"]}', "is not a peer id"),
        ("verify: {replicas: 9}", "less than or equal to 8"),
        ("verify: {replicas: 0}", "greater than or equal to 1"),
    ],
)
def test_bad_placement_and_verify_point_at_the_step(text: str, message: str) -> None:
    with pytest.raises(WorkflowDefinitionError) as info:
        parse_workflow(
            f"id: x\nsteps:\n  - name: a\n    tool: math.add\n    {text}\n", source="w.yaml"
        )
    assert str(info.value).startswith("w.yaml:5: step 'a'") and message in str(info.value)


# -- the step rules: depends_on, when, foreach, retries, timeout, on_error, placement ----

RULES = """
id: rules
inputs: [{name: words}]
steps:
  - name: a
    tool: text.upper
    inputs: [{name: text, value: x}]
  - name: b
    tool: text.lower
    foreach: "{{inputs.words}}"
    retries: 2
    timeout: 1.5m
    placement: remote
    on_error: continue
    inputs: [{name: text, value: "{{item}}"}]
  - name: c
    tool: text.reverse
    depends_on: a
    when: "len(steps.b.outputs.result) > 0"
    on_error: {fallback: {tool: "text.upper@1", inputs: [{name: text, value: "{{error.message}}"}]}}
    inputs: [{name: text, value: "y"}]
"""


def test_step_rules_shorthands_and_dependencies():
    spec = parse_workflow(RULES)
    b, c = spec.step("b"), spec.step("c")
    assert b.foreach is not None and b.foreach.items == "{{inputs.words}}"
    assert b.retries is not None and (b.retries.max, b.retries.backoff) == (2, 1.0)
    assert b.timeout == 90.0
    assert b.placement is not None and b.placement.mode == "remote"
    assert b.on_error is not None and b.on_error.continue_ == {}
    assert c.depends_on == ("a",)
    assert c.dependencies() == {"a", "b"}  # depends_on, and the step its condition reads
    assert c.on_error is not None and c.on_error.fallback is not None
    assert (c.on_error.fallback.tool, c.on_error.fallback.version) == ("text.upper", "1")
    assert b.run_options() == {
        "mode": "remote",
        "retries": {"max": 2, "backoff": 1.0, "factor": 2.0, "on": []},
        "timeout_s": 90.0,
        "foreach": {"items": "{{inputs.words}}", "max_parallel": None},
        "on_error": {"continue": {}},
    }
    assert spec.topological_order() == ["a", "b", "c"]
    assert WorkflowSpec.from_json(spec.to_json()) == spec
    assert spec.step("a").run_options() == {}  # (a plain step: run anywhere, once)


def test_retry_delays_grow_and_match_error_types():
    from workflows.dsl import RetrySpec

    retry = RetrySpec.model_validate({"max": 5, "backoff": "100ms", "factor": 3, "on": "KeyError"})
    assert [round(retry.delay(n), 3) for n in (1, 2, 3)] == [0.1, 0.3, 0.9]
    assert retry.applies_to("KeyError") and not retry.applies_to("ValueError")
    assert RetrySpec(max=1).applies_to(None)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("retries: -1", "greater than or equal to 0"),
        ("retries: {max: 1, backoff: 2h}", "backoff must be at most 1h"),
        ("retries: {max: 1, on: ['not a type']}", "is not an error type name"),
        ("timeout: -5", "must be between 0s and 7 days"),
        ("foreach: 3", "foreach"),
        ("foreach: {items: [1], max_parallel: 0}", "greater than or equal to 1"),
        ("on_error: retry", "on_error"),
        ("placement: {resources: {num_cpus: -1}}", "must be a number >= 0"),
        ("placement: {resources: {'bad name': 1}}", "invalid resource name"),
        ("when: 'inputs.x =='", "invalid 'when' condition"),
        ("depends_on: [nope]", "depends on unknown step 'nope'"),
        ("depends_on: [s]", "step 's' depends on itself (dependency cycle: s -> s)"),
    ],
)
def test_bad_step_rules_are_reported_at_the_step(rule: str, message: str):
    text = (
        "id: x\ninputs: [{name: x}]\nsteps:\n  - name: s\n    tool: text.upper\n"
        f"    {rule}\n    inputs: [{{name: text, value: hi}}]\n"
    )
    with pytest.raises(WorkflowDefinitionError) as info:
        parse_workflow(text, source="flow.yaml")
    assert message in info.value.message
    # (a cycle is reported at the step that starts it)
    assert info.value.line == (4 if "cycle" in message else 6)
