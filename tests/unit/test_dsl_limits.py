"""The workflow parser's bounds: every hostile file gets a one-line typed error naming the
bound and the line, in bounded time and memory; files within the bounds parse as before."""

from __future__ import annotations

import pickle
import resource
import time
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent

import pytest
import yaml

from tests import hostile_workflows as hostile
from workflows.dsl import (
    ParseLimits,
    WorkflowLimitError,
    WorkflowSpec,
    load_workflow,
    parse_workflow,
    read_workflow_file,
    workflow_bytes,
)
from workflows.dsl._compose import BoundedComposer
from workflows.errors import WorkflowDefinitionError

# (maker, expected bound or None for a plain WorkflowDefinitionError, line, text in message)
HOSTILE_ERRORS: dict[str, tuple[Callable[[], bytes], str | None, int, str]] = {
    "alias bomb in a default": (
        hostile.alias_bomb_in_default,
        "max_nodes",
        11,
        "alias *l4 makes the document larger than 100000 YAML nodes once aliases are expanded",
    ),
    "alias bomb in a step value": (hostile.alias_bomb_in_step, "max_nodes", 14, "alias *l4"),
    "alias bomb at top level": (hostile.alias_bomb_at_top, "max_nodes", 6, "alias *l4"),
    "merge-key bomb": (hostile.merge_key_bomb, "max_nodes", 14, "alias *m7"),
    "20 MB file": (hostile.big_file, "max_bytes", 1031, "larger than 1048576 bytes"),
    "900 KiB value": (
        hostile.long_value,
        "max_value_bytes",
        8,
        "a value of 921600 bytes, more than 262144",
    ),
    "10,000-deep nesting": (hostile.deep_nesting, "max_depth", 8, "deeper than 64 levels"),
    "600-deep block nesting": (
        hostile.deep_block_nesting,
        "max_depth",
        68,
        "deeper than 64 levels",
    ),
    "binary garbage": (hostile.binary_garbage, None, 1, "not UTF-8 text (byte 0xff at offset 0)"),
    "control character": (hostile.control_character, None, 8, "character U+0007 is not allowed"),
    "invalid YAML": (hostile.invalid_yaml, None, 9, "invalid YAML: "),
    "100,000-digit integer": (
        hostile.huge_integer,
        None,
        8,
        "a number of 100000 characters: numbers may have at most 4300 digits",
    ),
    "10,000 steps": (hostile.many_steps, "max_steps", 5004, "more than 1000 steps"),
    "recursive alias": (
        hostile.recursive_alias,
        None,
        8,
        "alias *me is inside the value it refers to (anchored on line 8)",
    ),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_ERRORS))
def test_each_hostile_file_gets_its_one_line_error(name: str):
    make, bound, line, text = HOSTILE_ERRORS[name]
    data = make()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(WorkflowDefinitionError) as info:
        parse_workflow(data, source="evil.yaml")
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    error = info.value
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"evil.yaml:{line}: "), message
    assert text in message
    assert (error.source, error.line) == ("evil.yaml", line)
    if bound is None:
        assert not isinstance(error, WorkflowLimitError), message
    else:
        assert isinstance(error, WorkflowLimitError), message
        assert error.bound == bound
        assert error.limit == getattr(ParseLimits(), bound)
        assert message.endswith(f"(workflow_files.{bound})")
    # the peak memory of the process did not move by more than the file itself and change
    assert grown_kib < 64 * 1024 + 3 * len(data) // 1024


def test_the_brace_storm_parses_in_linear_time():
    start = time.perf_counter()
    spec = parse_workflow(hostile.brace_storm(60_000))
    assert spec.steps[0].dependencies() == set()
    # a lazy regex took 25 s for 20,000 pairs; this is a guard with a wide margin, not a
    # speed figure (scripts/bench/hostile_parse.py prints those)
    assert time.perf_counter() - start < 10


def test_every_alias_counts_as_a_copy_of_its_anchor():
    # around the value, 16 nodes: the workflow's mapping, its 2 keys and 'x', the steps list,
    # the step's mapping, 3 keys and 2 values, its inputs list, the binding's mapping, its 2
    # keys and 'text'. The value: a list (1) of a list of 10 anchored (11) and 8 aliases of it
    doc = "id: x\nsteps:\n  - name: a\n    tool: text.upper\n    inputs:\n      - name: text\n"
    value = "        value: [&a [1,2,3,4,5,6,7,8,9,10]" + ", *a" * 8 + "]\n"
    text = doc + value
    total = 16 + 1 + 11 * 9
    assert parse_workflow(text, limits=ParseLimits(max_nodes=total))
    with pytest.raises(WorkflowLimitError) as info:
        parse_workflow(text, limits=ParseLimits(max_nodes=total - 1))
    assert info.value.bound == "max_nodes"
    assert "alias *a makes the document larger than" in str(info.value)


def test_expanded_bytes_count_every_alias():
    big = "x" * 200_000
    text = dedent(
        f"""\
        id: x
        inputs:
          - name: p
            default: &a '{big}'
        steps:
          - name: s
            tool: text.upper
            inputs:
              - name: text
                value: [{", ".join(["*a"] * 30)}]
        """
    )
    with pytest.raises(WorkflowLimitError) as info:
        parse_workflow(text)
    assert info.value.bound == "max_expanded_bytes"
    assert info.value.line == 10
    expected = "alias *a makes the document hold more than 4194304 bytes of values once aliases "
    assert expected in str(info.value)
    assert parse_workflow(text, limits=ParseLimits(max_expanded_bytes=32 * 1024 * 1024))


def test_an_alias_may_not_nest_a_value_deeper_than_the_limit():
    deep = "[" * 10 + "]" * 10
    text = (
        "id: x\ninputs:\n  - name: p\n    default: &d " + deep + "\n"
        "steps:\n  - name: s\n    tool: text.upper\n    inputs:\n      - name: text\n"
        "        value: [[[[*d]]]]\n"
    )
    assert parse_workflow(text, limits=ParseLimits(max_depth=20))
    with pytest.raises(WorkflowLimitError) as info:
        parse_workflow(text, limits=ParseLimits(max_depth=15))
    assert info.value.bound == "max_depth"
    assert "alias *d nests deeper than 15 levels" in str(info.value)


def test_limits_are_configurable_and_name_themselves():
    flow = hostile.many_steps(20)
    assert len(parse_workflow(flow, limits=ParseLimits(max_steps=20)).steps) == 20
    with pytest.raises(WorkflowLimitError, match=r":99: more than 19 steps \(workflow_files"):
        parse_workflow(flow, limits=ParseLimits(max_steps=19))
    with pytest.raises(WorkflowLimitError, match="larger than 1024 bytes"):
        parse_workflow(flow, limits=ParseLimits(max_bytes=1024))
    with pytest.raises(WorkflowLimitError, match="more than 100 YAML nodes"):
        parse_workflow(flow, limits=ParseLimits(max_nodes=100))


def test_steps_behind_an_alias_count_too():
    step = "{name: s, tool: util.echo, inputs: [{name: value, value: 1}]}"
    text = (
        "id: x\ninputs:\n  - name: p\n    default: &s\n"
        + "".join(f"      - {step.replace('name: s', f'name: s{i}', 1)}\n" for i in range(5))
        + "steps: *s\n"
    )
    assert len(parse_workflow(text, limits=ParseLimits(max_steps=5)).steps) == 5
    with pytest.raises(WorkflowLimitError) as info:
        parse_workflow(text, limits=ParseLimits(max_steps=4))
    assert (info.value.bound, info.value.line) == ("max_steps", 9)


def test_the_deadline_stops_reading(monkeypatch: pytest.MonkeyPatch):
    ticks = iter(range(1000))

    def clock() -> float:  # each look at the clock: one more second
        return float(next(ticks))

    with pytest.raises(WorkflowLimitError) as info:
        parse_workflow(hostile.many_steps(300), limits=ParseLimits(timeout_s=2), clock=clock)
    assert info.value.bound == "timeout_s"
    assert "reading the YAML took longer than 2 s" in str(info.value)
    assert info.value.line is not None and info.value.line > 1


def test_text_checks_without_parsing():
    assert workflow_bytes("id: é\n") == "id: é\n".encode()
    with pytest.raises(WorkflowDefinitionError, match="lone surrogate U\\+D800"):
        workflow_bytes("id: x\nname: \ud800\n", source="s")
    with pytest.raises(WorkflowDefinitionError, match="s:2: the text is not valid Unicode"):
        parse_workflow("id: x\nname: \ud800\n", source="s")
    with pytest.raises(WorkflowLimitError, match="larger than 2048 bytes"):
        workflow_bytes("é" * 1500, limits=ParseLimits(max_bytes=2048))  # 3000 bytes


def test_files_are_read_no_further_than_the_limit(tmp_path: Path):
    with pytest.raises(WorkflowLimitError, match="larger than 1048576 bytes"):
        load_workflow("/dev/zero")  # endless: reading it all would never end
    path = tmp_path / "big.yaml"
    path.write_bytes(hostile.big_file(3 * 1024 * 1024))
    with pytest.raises(WorkflowLimitError) as info:
        read_workflow_file(path)
    assert str(info.value).startswith(f"{path}:1031: the file is larger than 1048576 bytes")
    with pytest.raises(WorkflowDefinitionError, match="cannot read the workflow file"):
        read_workflow_file(tmp_path)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("!!set {a, b}", "unsupported YAML tag '!!set'"),
        ("!!binary aGVsbG8=", "unsupported YAML tag '!!binary'"),
        ("!!timestamp 2024-01-01", "unsupported YAML tag '!!timestamp'"),
        ("!!omap [a: 1]", "unsupported YAML tag '!!omap'"),
        ("!custom x", "unsupported YAML tag '!custom'"),
        ("!!int abc", "'abc' is not a valid !!int"),
        ("!!bool maybe", "'maybe' is not a valid !!bool"),
        ("[*nowhere]", "alias *nowhere refers to no anchor"),
        ("[&a 1, &a 2]", "anchor &a is defined twice (first on line 8)"),
        (".nan", "'.nan' is not a finite number: JSON has no NaN or infinity"),
        ("[-.inf]", "'-.inf' is not a finite number"),
        ("1.0e+999", "'1.0e+999' is not a finite number"),
        ("{[a]: b}", "found unhashable key"),
    ],
)
def test_only_json_data_is_accepted(value: str, message: str):
    text = hostile.invalid_yaml().decode().replace("[1, 2, 3", value)
    with pytest.raises(WorkflowDefinitionError) as info:
        parse_workflow(text, source="f.yaml")
    assert not isinstance(info.value, WorkflowLimitError)
    assert str(info.value).startswith("f.yaml:8: ")
    assert message in str(info.value)


def test_mapping_keys_are_their_text():
    text = (
        hostile.invalid_yaml()
        .decode()
        .replace("[1, 2, 3", "[{1: a, true: b, null: c, 1.5: d, x: e}, {&k 2: f}, {*k : g}]")
    )
    value = parse_workflow(text).steps[0].inputs[0].value
    first = {"1": "a", "true": "b", "null": "c", "1.5": "d", "x": "e"}
    assert value == [first, {"2": "f"}, {"2": "g"}]


def test_json_like_values_keep_their_types_and_dates_stay_text():
    text = (
        hostile.invalid_yaml()
        .decode()
        .replace(
            "[1, 2, 3",
            "{i: 1, f: 1.5, b: true, n: null, d: 2024-01-01, e: '=', s: !!str 7, fl: !!float 2}",
        )
    )
    spec = parse_workflow(text)
    assert spec.steps[0].inputs[0].value == {
        "i": 1,
        "f": 1.5,
        "b": True,
        "n": None,
        "d": "2024-01-01",
        "e": "=",
        "s": "7",
        "fl": 2.0,
    }
    assert WorkflowSpec.from_json(spec.to_json()) == spec


def test_anchors_aliases_and_merge_keys_still_work():
    text = dedent(
        """\
        id: x
        inputs:
          - name: base
            default: &base {a: 1, b: [1, 2]}
        steps:
          - name: s
            tool: util.echo
            inputs:
              - name: value
                value: {<<: *base, c: *base}
        """
    )
    value = parse_workflow(text).steps[0].inputs[0].value
    assert value == {"a": 1, "b": [1, 2], "c": {"a": 1, "b": [1, 2]}}


def test_a_second_document_is_refused():
    text = "id: x\nsteps: []\n---\nid: y\n"
    with pytest.raises(WorkflowDefinitionError, match=r"f:3: a second YAML document starts here"):
        parse_workflow(text, source="f")


def test_limit_errors_pickle_and_relocate():
    error = WorkflowLimitError("nested deeper than 4 levels", "f", 3, bound="max_depth", limit=4)
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.bound, again.limit) == (str(error), "max_depth", 4)
    moved = WorkflowLimitError("x", bound="max_nodes", limit=100).located("g.yaml", 7)
    assert str(moved) == "g.yaml:7: x (workflow_files.max_nodes)"
    assert isinstance(moved, WorkflowLimitError) and moved.bound == "max_nodes"


@pytest.mark.parametrize(
    "name", ["alias bomb in a default", "10,000-deep nesting", "recursive alias", "10,000 steps"]
)
def test_the_pure_python_parser_is_bounded_too(name: str):
    """Without libyaml, PyYAML's own parser feeds the same composer."""
    make, bound, line, text = HOSTILE_ERRORS[name]
    composer = BoundedComposer("f", ParseLimits(), deadline=time.monotonic() + 60)
    loader = yaml.SafeLoader(make().decode())
    try:
        with pytest.raises(WorkflowDefinitionError) as info:
            composer.compose(loader)
    finally:
        loader.dispose()
    assert info.value.line == line
    assert text in str(info.value)
    assert getattr(info.value, "bound", None) == bound


def test_messages_quoting_the_file_stay_short():
    long = "a" * 200_000
    flow = hostile.many_steps(3).decode()
    text = flow.replace("value: t0\n", "value: '{{steps." + long + ".outputs.x}}'\n", 1)
    with pytest.raises(WorkflowDefinitionError) as info:
        parse_workflow(text, source="f")
    message = str(info.value)
    assert len(message) < 1100 and "\n" not in message
    assert message.startswith("f:8: step 's0' references unknown step 'aaaa")
    assert " ... " in message
