"""Property-based tests of the workflow parser (hypothesis): random bytes, random YAML,
and valid workflows mutated with YAML's special characters. Whatever the input, the only
exception is a one-line WorkflowDefinitionError (a WorkflowLimitError naming a real bound),
each call returns within its time bound, and what parses survives a JSON round trip."""

from __future__ import annotations

import time
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workflows.dsl import ParseLimits, WorkflowLimitError, WorkflowSpec, parse_workflow
from workflows.errors import WorkflowDefinitionError

# small limits, so that random documents reach them often
LIMITS = ParseLimits(
    max_bytes=4096,
    max_depth=8,
    max_nodes=300,
    max_steps=6,
    max_value_bytes=200,
    max_expanded_bytes=2000,
    timeout_s=5,
)
CALL_BOUND_S = LIMITS.timeout_s + 5  # the deadline, plus what is built from what was counted

PROPERTIES = settings(
    max_examples=150,
    deadline=None,  # timed below, against the parser's own bound
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def parses_safely(document: str | bytes, limits: ParseLimits = LIMITS) -> WorkflowSpec | None:
    """The property: one typed, one-line error or a spec that round-trips, within bounds."""
    start = time.monotonic()
    try:
        spec = parse_workflow(document, source="p.yaml", limits=limits)
    except WorkflowDefinitionError as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        if isinstance(exc, WorkflowLimitError):
            assert exc.bound in ParseLimits.model_fields
            assert exc.limit == getattr(limits, exc.bound)
        spec = None
    else:
        assert WorkflowSpec.from_json(spec.to_json()) == spec
        spec.topological_order()
    assert time.monotonic() - start < CALL_BOUND_S
    return spec


# -- documents ---------------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_-]{0,6}", fullmatch=True)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def workflows(draw: st.DrawFn) -> dict[str, Any]:
    """A workflow document, valid more often than not: steps that may reference inputs and
    earlier steps' outputs."""
    inputs = draw(st.lists(names, max_size=3, unique=True))
    steps: list[dict[str, Any]] = []
    for index in range(draw(st.integers(1, 5))):
        refs = [f"{{{{inputs.{n}}}}}" for n in inputs]
        refs += [f"{{{{steps.s{i}.outputs.result}}}}" for i in range(index)]
        value = draw(st.one_of(json_values, st.sampled_from(refs) if refs else json_values))
        step: dict[str, Any] = {
            "name": f"s{index}",
            "tool": draw(st.sampled_from(["text.upper", "math.add@1.0.0", "util.echo"])),
            "inputs": [{"name": draw(names), "value": value}],
        }
        if draw(st.booleans()):
            step["outputs"] = [{"name": "result"}]
        steps.append(step)
    doc: dict[str, Any] = {"id": draw(names), "steps": steps}
    if inputs:
        doc["inputs"] = [
            {"name": n, "default": draw(json_values)} if draw(st.booleans()) else {"name": n}
            for n in inputs
        ]
    if draw(st.booleans()):
        doc["outputs"] = [{"name": "out", "value": f"{{{{steps.s{len(steps) - 1}.outputs.x}}}}"}]
    return doc


FRAGMENTS = [
    "&a ",
    "*a",
    "&b [*a, *a, *a, *a]",
    "*b",
    "[",
    "]",
    "{",
    "}",
    ": ",
    "- ",
    ", ",
    "<<: *a",
    "!!set ",
    "!!int ",
    "!!binary ",
    "!foo ",
    "? ",
    "|\n",
    ">-\n",
    "#",
    "'",
    '"',
    "\\",
    "\t",
    "\n",
    "  ",
    "\x07",
    "\x00",
    "\x85",
    "\ufeff",
    "\u2028",
    "é",
    "\U0001f600",
    "{{",
    "}}",
    "{{steps.s0.outputs.result}}",
    "{{inputs.",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "%TAG ! !x\n",
    "~",
    ".nan",
    "-.inf",
    "0x1F",
    "0o17",
    "1_000",
    "190:20:30",
    "9" * 30,
    "1e5",
    "2024-01-01",
    "=",
    "steps:",
    "id:",
    "inputs:",
    "value:",
    "name:",
    "tool:",
    "[" * 20,
    "{a: " * 12,
]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A workflow's YAML with a few fragments inserted, slices deleted or duplicated."""
    text = yaml.safe_dump(draw(workflows()), sort_keys=False, allow_unicode=True)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["insert", "delete", "duplicate", "replace"]))
        if action == "insert":
            text = text[:at] + draw(st.sampled_from(FRAGMENTS)) + text[at:]
        elif action == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        elif action == "duplicate":
            end = min(len(text), at + draw(st.integers(1, 60)))
            text = text[:end] + text[at:end] * draw(st.integers(1, 4)) + text[end:]
        else:
            text = text[:at] + draw(st.sampled_from(FRAGMENTS)) + text[at + 1 :]
    return text


@st.composite
def alias_towers(draw: st.DrawFn) -> str:
    """Anchors each made of several aliases of the one before (small and large bombs)."""
    levels, width = draw(st.integers(1, 12)), draw(st.integers(1, 9))
    lines = ["id: bomb", "inputs:", "  - name: p", "    default:", "      - &l0 [x, y]"]
    for level in range(1, levels):
        lines.append(f"      - &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    lines += [
        "steps:",
        "  - name: s",
        "    tool: util.echo",
        "    inputs:",
        "      - name: value",
        f"        value: {draw(st.sampled_from(['*l0', f'*l{levels - 1}', '{<<: *l0}']))}",
    ]
    return "\n".join(lines) + "\n"


# -- properties --------------------------------------------------------------------------------


@PROPERTIES
@given(st.binary(max_size=600))
def test_random_bytes(data: bytes):
    parses_safely(data)


@PROPERTIES
@given(st.text(max_size=400))
def test_random_text(text: str):
    parses_safely(text)


@PROPERTIES
@given(workflows())
def test_generated_workflows_parse_or_fail_cleanly(doc: dict[str, Any]):
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    parses_safely(text, ParseLimits())


@PROPERTIES
@given(mutated())
def test_mutated_workflows(text: str):
    parses_safely(text)


@PROPERTIES
@given(mutated())
def test_mutated_workflows_as_utf8_bytes_with_default_limits(text: str):
    parses_safely(text.encode("utf-8", "surrogatepass"), ParseLimits())


@PROPERTIES
@given(alias_towers())
def test_alias_towers(text: str):
    parses_safely(text)
    parses_safely(text, ParseLimits())


@PROPERTIES
@given(st.integers(1, 3000), st.sampled_from(["[", "{a: ", "- ", "[{b: "]))
def test_deep_nesting(depth: int, opener: str):
    # block sequences nest on one line ('- - - x'), below the key that holds them
    body = "\n          " + "- " * depth + "x" if opener == "- " else opener * depth
    parses_safely(
        "id: deep\nsteps:\n  - name: s\n    tool: util.echo\n    inputs:\n"
        f"      - name: value\n        value: {body}\n"
    )
