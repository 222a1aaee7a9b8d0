"""Bounds on what a step may produce (workflows.engine.limits): pure functions."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest

from workflows.engine.limits import (
    MIN_TEXT_LIMIT,
    StepLimits,
    bound_error_text,
    check_output_size,
    cut_text,
    json_size,
)
from workflows.errors import StepOutputTooLargeError, ToolError


def _compact(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -12,
        10**30,
        1.5,
        -2.25e-10,
        "",
        "plain",
        "héllo wörld ✓ 𝄞",
        [],
        {},
        [1, "a", None, [2, [3, {}]]],
        {"result": "x" * 1000, "n": 3, "nested": {"a": [True, False, None], "b": ""}},
        {"ünï": ["códe", 1.25]},
    ],
)
def test_json_size_is_the_size_of_the_compact_json(value: Any) -> None:
    assert json_size(value) == _compact(value)


def test_json_size_does_not_recurse() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    assert json_size(deep) == 2 * 100_001  # 100,001 lists, each "[" and "]"


def test_an_output_over_the_limit_is_a_typed_error_naming_limit_and_size() -> None:
    limits = StepLimits(max_output_bytes=1000)
    check_output_size(1000, limits)
    with pytest.raises(StepOutputTooLargeError) as caught:
        check_output_size(104_857_602, limits, "the output of tool 'util.fill'")
    err = caught.value
    assert isinstance(err, ToolError)  # a tool's error: it fails the step like one
    assert (err.size, err.limit) == (104_857_602, 1000)
    assert str(err) == (
        "the output of tool 'util.fill' is 104857602 bytes, over the limit of 1000 bytes "
        "(max_step_output_bytes): return less, or raise the limit"
    )
    again = pickle.loads(pickle.dumps(err))  # Ray ships it from the worker
    assert type(again) is StepOutputTooLargeError and str(again) == str(err)


def test_no_output_limit_by_default() -> None:
    check_output_size(10**12, StepLimits())


def test_short_texts_are_kept_and_long_ones_cut_with_a_marker() -> None:
    assert cut_text("short", 300, "max_error_chars") == "short"
    text = "a" * 400_000
    cut = cut_text(text, 4096, "max_error_chars")
    assert len(cut) <= 4096
    assert cut.startswith("a" * 3000)
    assert cut.endswith("[…400000 characters in all, cut to the max_error_chars of 4096…]")
    tail = cut_text("x" * 10_000 + "END", 500, "max_traceback_chars", keep="tail")
    assert len(tail) <= 500 and tail.endswith("END")
    assert tail.startswith("[…10003 characters in all")


def test_an_error_keeps_its_message_head_and_its_traceback_tail() -> None:
    limits = StepLimits(max_error_chars=300, max_traceback_chars=400)
    frames = "".join(f'  File "m.py", line {i}, in f{i}\n    g()\n' for i in range(5000))
    text = (
        "tool 'x' failed: "
        + "M" * 5000
        + "\nTraceback (most recent call last):\n"
        + frames
        + "ValueError: the real cause"
    )
    bounded = bound_error_text(text, limits)
    assert bounded.startswith("tool 'x' failed: MMM")
    assert "cut to the max_error_chars of 300" in bounded
    assert "cut to the max_traceback_chars of 400" in bounded
    assert bounded.endswith("ValueError: the real cause")  # where it was raised
    assert len(bounded) <= 300 + 400
    assert bound_error_text("fine", limits) == "fine"


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_step_output_bytes"):
        StepLimits(max_output_bytes=0)
    with pytest.raises(ValueError, match="max_error_chars"):
        StepLimits(max_error_chars=MIN_TEXT_LIMIT - 1)
    with pytest.raises(ValueError, match="max_traceback_chars"):
        StepLimits(max_traceback_chars=10)
