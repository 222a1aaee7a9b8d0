"""The ``when`` condition language: what it parses, what it evaluates to, and the typed,
bounded errors of malformed or hostile conditions (it never reaches Python's eval)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from workflows.expr import (
    MAX_DEPTH,
    MAX_EXPR_CHARS,
    ExprError,
    ExprSyntaxError,
    evaluate,
    parse_expr,
)
from workflows.refs import DEFAULT_OUTPUT, SKIPPED

INPUTS = {"mode": "full", "n": 4, "files": ["a.txt", "b.txt"], "flag": False, "cfg": {"k": 1}}
OUTPUTS = {
    "count": {"result": 3},
    "scan": {"result": "no error here", "tags": ["x", "y"]},
    "gone": {SKIPPED: "its condition was false"},
    "none": {DEFAULT_OUTPUT: []},
}


def ev(text: str, **context: Any) -> Any:
    return evaluate(parse_expr(text), INPUTS, OUTPUTS, **context)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("inputs.mode == 'full'", True),
        ('inputs.mode != "full"', False),
        ("inputs.n > 3 and steps.count.outputs.result >= 3", True),
        ("inputs.n < 3 or not inputs.flag", True),
        ("not (inputs.n == 4)", False),
        ("'error' in steps.scan.outputs.result", True),
        ("'x' not in steps.scan.outputs.tags", False),
        ("len(inputs.files) == 2", True),
        ("inputs.files[1] == 'b.txt'", True),
        ("inputs.files[-1]", "b.txt"),
        ("inputs.cfg.k + 1", 2),
        ("inputs.n * 2 - 1", 7),
        ("inputs.n / 8", 0.5),
        ("inputs.n % 3", 1),
        ("-inputs.n", -4),
        ("upper(inputs.mode) + '!'", "FULL!"),
        ("lower('ABC')", "abc"),
        ("str(inputs.n) == '4'", True),
        ("int('12') + float('0.5')", 12.5),
        ("bool(inputs.files)", True),
        ("[1, 2] + [3]", [1, 2, 3]),
        ("true and null", None),
        ("{{inputs.n}} > 3", True),  # references may keep their braces
        ("{{steps.count.outputs.result}} == 3", True),
        ("steps.gone.outputs.result == null", True),  # a skipped step's outputs are null
        ("len(steps.none.outputs.result) == 0", True),  # an empty foreach's are []
        ("1.5e1 == 15", True),
    ],
)
def test_conditions_evaluate(text: str, expected: Any):
    assert ev(text) == expected


def test_item_and_index_in_a_foreach_step():
    assert ev("item.size > 10 and index == 2", item={"size": 11}, index=2) is True


def test_parse_reports_what_the_condition_reads():
    expr = parse_expr("inputs.a == 1 and steps.s.outputs.o > inputs.b or item")
    assert expr.inputs == {"a", "b"}
    assert expr.steps == {("s", "o")}
    assert expr.uses_item


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("inputs.mode ==", "unexpected the end", 15),
        ("inputs.mode = 'x'", "unexpected character '='", 13),
        ("__import__('os')", "unknown name '__import__'", 1),
        ("mode == 'x'", "unknown name 'mode'", 1),
        ("inputs", "write inputs.NAME", 1),
        ("steps.a.result", "write steps.STEP.outputs.NAME", 1),
        ("(inputs.n", "expected ')'", 10),
        ("'open", 'unexpected character "\'"', 1),
        ("inputs.n > 1 1", "unexpected '1'", 14),
        ("", "the condition is empty", 1),
        ("{{inputs.n > 1", "unmatched '{{'", 1),
        ("inputs.n.and", "expected a name after '.'", 10),
        ("1" * 70, "more than 64 digits", 1),
        ("1e999 > 0", "number out of range", 1),
    ],
)
def test_malformed_conditions_say_what_and_where(text: str, message: str, column: int):
    with pytest.raises(ExprSyntaxError) as info:
        parse_expr(text)
    assert message in str(info.value)
    assert info.value.column == column


def test_bounds_on_length_and_nesting():
    with pytest.raises(ExprSyntaxError, match=f"at most {MAX_EXPR_CHARS} characters"):
        parse_expr("1 + " * 300 + "1")
    with pytest.raises(ExprSyntaxError, match=f"nested more than {MAX_DEPTH} deep"):
        parse_expr("(" * 40 + "1" + ")" * 40)
    with pytest.raises(ExprSyntaxError, match="nested more than"):
        parse_expr("not " * 100 + "true")
    with pytest.raises(ExprSyntaxError, match="nested more than"):
        parse_expr("-" * 100 + "1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("inputs.missing == 1", "workflow input 'missing' has no value"),
        ("steps.other.outputs.x", "step 'other' has no outputs"),
        ("steps.count.outputs.nope", "produced no output 'nope'"),
        ("inputs.mode > 3", "cannot compare a text > a number"),
        ("inputs.mode * 3", "cannot compute a text * a number"),
        ("inputs.n / 0", "division by zero"),
        ("len(inputs.n)", "len() of a number"),
        ("inputs.files[5]", "index 5 out of range"),
        ("inputs.cfg.z", "no key 'z'"),
        ("3 in inputs.mode", "'in' a text needs a text"),
        ("int('x')", "int() of 'x'"),
        ("99999999999999999999 * " * 40 + "1", "a number too large"),
    ],
)
def test_evaluation_errors_are_typed(text: str, message: str):
    with pytest.raises(ExprError, match=re.escape(message)):
        ev(text)
