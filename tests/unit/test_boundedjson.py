"""Bounded parsing of a frame's JSON: every bound of FrameLimits, at and over its limit."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from protocols.boundedjson import check_bounds, parse_json
from protocols.errors import (
    FrameDecodeError,
    FrameLimitError,
    NestingTooDeepError,
    NumberOutOfRangeError,
    NumberTooLongError,
    RemoteProtocolError,
    TooManyContainersError,
    TooManyMembersError,
)
from protocols.framing import FrameDecoder, encode_uvarint
from protocols.limits import DEFAULT_LIMITS, FrameLimits


def frame(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


def nested(levels: int, inner: bytes = b"0", opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    """``levels`` arrays (or other containers) around ``inner``, as a frame's ``x``."""
    return b'{"type":"t","x":' + opener * levels + inner + closer * levels + b"}"


def members(count: int) -> bytes:
    return b'{"type":"t","x":[' + b",".join([b"0"] * count) + b"]}"


def object_members(count: int) -> bytes:
    body = b",".join(b'"k%d":%d' % (i, i) for i in range(count - 1))
    return b'{"type":"t",' + body + b"}"  # "type" is one of the count members


def number(digits: int, prefix: bytes = b"", suffix: bytes = b"") -> bytes:
    return b'{"type":"t","x":' + prefix + b"7" * digits + suffix + b"}"


# -- the two frames, through the frame decoder ---------------------------------------


def test_deeply_nested_frame_is_a_typed_error_not_a_recursion_error() -> None:
    payload = nested(100_000)
    start = time.monotonic()
    with pytest.raises(NestingTooDeepError) as info:
        FrameDecoder().feed(frame(payload))
    assert time.monotonic() - start < 10  # bounded, with a wide margin for a loaded machine
    error = info.value
    assert (error.bound, error.limit, error.code) == ("max_depth", 32, "bad_frame")
    # the frame's object is level 1, so the 32nd "[" is level 33: byte 16 + 31
    assert error.offset == 16 + 31
    assert str(error) == "frame JSON nests deeper than the limit of 32 levels (at byte 47)"
    assert isinstance(error, RemoteProtocolError)


def test_hundred_thousand_digit_integer_is_a_typed_error() -> None:
    with pytest.raises(NumberTooLongError) as info:
        FrameDecoder().feed(frame(number(100_000)))
    error = info.value
    assert (error.bound, error.limit, error.offset, error.code) == (
        "max_number_digits",
        64,
        16,
        "bad_frame",
    )
    assert "more than 64 digits" in str(error) and "at byte 16" in str(error)


# -- each bound at its limit and one past it -------------------------------------------------


def test_nesting_at_the_limit_is_accepted_and_one_deeper_is_not() -> None:
    assert parse_json(nested(31))["x"] == json.loads(nested(31))["x"]  # 1 + 31 = 32 levels
    with pytest.raises(NestingTooDeepError, match="at byte 47"):
        parse_json(nested(32))


@pytest.mark.parametrize(("opener", "closer"), [(b"[", b"]"), (b'{"a":', b"}")])
def test_nesting_counts_arrays_and_objects_alike(opener: bytes, closer: bytes) -> None:
    limits = FrameLimits(max_depth=4)
    parse_json(nested(3, opener=opener, closer=closer), limits)
    with pytest.raises(NestingTooDeepError) as info:
        parse_json(nested(4, opener=opener, closer=closer), limits)
    assert info.value.limit == 4
    assert info.value.offset == 16 + 3 * len(opener)


def test_nesting_without_closing_brackets_is_refused_as_too_deep() -> None:
    with pytest.raises(NestingTooDeepError):
        parse_json(b'{"type":"t","x":' + b"[" * 100_000)


def test_members_at_the_limit_are_accepted_and_one_more_is_not() -> None:
    assert len(parse_json(members(100_000))["x"]) == 100_000
    with pytest.raises(TooManyMembersError) as info:
        parse_json(members(100_001))
    error = info.value
    assert (error.bound, error.limit) == ("max_members", 100_000)
    assert error.offset == 17 + 2 * 100_000 - 1  # the 100,000th comma
    assert "more than 100000 members (member 100001 at byte 200016)" in str(error)


def test_object_members_count_too() -> None:
    limits = FrameLimits(max_members=50)
    assert len(parse_json(object_members(50), limits)) == 50
    with pytest.raises(TooManyMembersError):
        parse_json(object_members(51), limits)


def test_members_are_counted_per_container_not_per_frame() -> None:
    limits = FrameLimits(max_members=3)
    payload = b'{"type":"t","x":[[1,2,3],[4,[5,6,7],6],[7,8,9]]}'
    assert parse_json(payload, limits)["x"][1] == [4, [5, 6, 7], 6]
    with pytest.raises(TooManyMembersError):
        parse_json(b'{"type":"t","x":[[1,2,3],[4,[5,6,7],6,0],[7,8,9]]}', limits)


def test_containers_at_the_limit_are_accepted_and_one_more_is_not() -> None:
    inner = b"[" + b",".join([b"[]"] * 99_998) + b"]"
    at_limit = b'{"type":"t","x":[' + inner + b"," + inner + b"]}"  # 1 + 1 + 2 + 199,996
    assert len(parse_json(at_limit)["x"]) == 2
    over = at_limit[:-2] + b",[]]}"
    with pytest.raises(TooManyContainersError) as info:
        parse_json(over)
    error = info.value
    assert (error.bound, error.limit) == ("max_containers", 200_000)
    assert error.offset == over.rindex(b"[")
    assert "more than 200000 arrays and objects in all (number 200001 at byte" in str(error)


def test_containers_counted_in_invalid_json_are_left_to_json() -> None:
    """A backslash outside a string makes the quick count and the exact scan disagree."""
    payload = b'{"type":"t","x":[[],\\"[],[]]}'
    with pytest.raises(FrameDecodeError, match="not JSON"):
        parse_json(payload, FrameLimits(max_depth=4, max_containers=4))


def test_containers_count_objects_and_skip_strings() -> None:
    limits = FrameLimits(max_depth=3, max_containers=4)
    assert parse_json(b'{"type":"t","s":"[[[{{{","x":[{},{}]}', limits)["s"] == "[[[{{{"
    with pytest.raises(TooManyContainersError, match="at byte 36"):
        parse_json(b'{"type":"t","s":"[[[{{{","x":[{},{},{}]}', limits)


def test_digits_at_the_limit_are_accepted_and_one_more_is_not() -> None:
    assert parse_json(number(64))["x"] == int("7" * 64)
    with pytest.raises(NumberTooLongError, match="at byte 17"):
        parse_json(number(65, prefix=b"-"))


@pytest.mark.parametrize(
    ("prefix", "suffix"), [(b"1.", b""), (b"1e", b""), (b"", b".5"), (b"", b"e5")]
)
def test_every_digit_run_of_a_number_is_bounded(prefix: bytes, suffix: bytes) -> None:
    with pytest.raises(NumberTooLongError):
        parse_json(number(65, prefix, suffix))


def test_limits_are_configurable() -> None:
    limits = FrameLimits(max_depth=2, max_number_digits=20, max_members=2, max_containers=3)
    assert parse_json(b'{"type":"t","x":[1,2]}', limits)["x"] == [1, 2]
    for payload, error in [
        (b'{"type":"t","x":[[1]]}', NestingTooDeepError),
        (b'{"type":"t","x":[1,2,3]}', TooManyMembersError),
        (b'{"type":"t","x":[],"y":[],"z":[]}', TooManyContainersError),
        (b'{"type":"t","x":' + b"1" * 21 + b"}", NumberTooLongError),
    ]:
        with pytest.raises(error):
            parse_json(payload, limits)
        with pytest.raises(error):
            FrameDecoder(limits=limits).feed(frame(payload))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_depth": 0},
        {"max_depth": 129},
        {"max_number_digits": 19},
        {"max_number_digits": 201},
        {"max_members": 0},
        {"max_frame_size": 0},
        {"max_containers": 31},
    ],
)
def test_nonsense_limits_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        FrameLimits(**kwargs)


def test_frame_decoder_takes_the_frame_size_from_its_argument_over_the_limits() -> None:
    decoder = FrameDecoder(100, limits=FrameLimits(max_depth=3))
    assert (decoder.limits.max_frame_size, decoder.limits.max_depth) == (100, 3)
    assert FrameDecoder().limits == DEFAULT_LIMITS


# -- numbers too big for a float -------------------------------------------------------------


@pytest.mark.parametrize("literal", [b"1e999", b"-1E+400", b"1.5e0000309", b"9" * 64 + b"e250"])
def test_numbers_beyond_the_float_range_are_refused(literal: bytes) -> None:
    payload = b'{"type":"t","s":"1e999","x":' + literal + b"}"
    with pytest.raises(NumberOutOfRangeError) as info:
        parse_json(payload)
    assert info.value.offset == payload.index(b"x") + 3  # not the string's "1e999"
    assert literal.decode() in str(info.value)


@pytest.mark.parametrize("literal", [b"1e308", b"-1.7976931348623157e308", b"1e-999", b"1e99"])
def test_numbers_within_the_float_range_are_accepted(literal: bytes) -> None:
    assert parse_json(b'{"type":"t","x":' + literal + b"}")["x"] == float(literal)


# -- what the quick check must not mistake for a problem -------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100,
        "{" * 100 + "]" * 50,
        "," * 20_000,
        "7" * 1000,
        'say \\"[[[[\\" and \\\\',
        "file2024e300 1e999",
        "\\ud800 (a backslash, then ud800)",
    ],
)
def test_brackets_commas_and_digits_inside_strings_do_not_count(text: str) -> None:
    value = {"type": "t", "x": text, "y": [1, {"z": text}]}
    payload = json.dumps(value, ensure_ascii=False).encode()
    assert parse_json(payload, FrameLimits(max_depth=3, max_members=3)) == value


def test_a_big_string_frame_is_accepted() -> None:
    value = {"type": "result", "handoff_id": "h", "outputs": {"r": 'a\n"b' * 1_000_000}}
    payload = json.dumps(value).encode()
    assert parse_json(payload) == value


def test_a_broad_frame_within_the_limits_is_accepted() -> None:
    """Thousands of containers, so the quick check takes its linear regex path."""
    value = {"type": "t", "x": [[[i, [i]] for i in range(100)] for _ in range(100)]}
    assert parse_json(json.dumps(value).encode(), FrameLimits(max_depth=5, max_members=100)) == (
        value
    )
    with pytest.raises(NestingTooDeepError):
        parse_json(json.dumps(value).encode(), FrameLimits(max_depth=4, max_members=100))


def test_a_deep_and_broad_frame_within_the_limits_is_accepted() -> None:
    """Shrinks slowly when peeled, so the quick check takes its linear regex path."""
    unit = "[" * 30 + "0" + "]" * 30
    payload = ('{"type":"t","x":[' + ",".join([unit] * 300) + "]}").encode()
    assert len(parse_json(payload)["x"]) == 300
    with pytest.raises(NestingTooDeepError):
        parse_json(payload, FrameLimits(max_depth=31))


# -- text json.loads would let through -------------------------------------------------------


@pytest.mark.parametrize("escape", [b"\\ud800", b"\\uDBFFx", b"\\udc00", b"\\ud800\\u0041"])
def test_lone_surrogate_escapes_are_refused(escape: bytes) -> None:
    payload = b'{"type":"t","x":["ok","' + escape + b'"]}'
    with pytest.raises(FrameDecodeError, match="lone UTF-16 surrogate") as info:
        parse_json(payload)
    assert "at byte 23" in str(info.value)


@pytest.mark.parametrize("escape", ["\\ud8zz", "\\ud8\u4f60", "\\uDB"])
def test_a_broken_unicode_escape_is_a_json_error(escape: str) -> None:
    with pytest.raises(FrameDecodeError, match="Invalid \\\\uXXXX escape"):
        parse_json(f'{{"type":"t","x":"{escape}"}}'.encode())


def test_surrogate_pairs_are_accepted() -> None:
    assert parse_json(b'{"type":"t","x":"\\ud83d\\udc1d"}')["x"] == "🐝"


@pytest.mark.parametrize("payload", [b'{"type":"t","x":NaN}', b'{"type":"t","x":-Infinity}'])
def test_nan_and_infinity_are_refused(payload: bytes) -> None:
    with pytest.raises(FrameDecodeError, match="not valid JSON"):
        parse_json(payload)


def test_a_json_syntax_error_is_reported_at_its_byte() -> None:
    with pytest.raises(FrameDecodeError, match=r"frame is not JSON: .* at byte 13"):
        parse_json('{"type":"é" x}'.encode())  # character 12: é is two bytes


def test_check_bounds_alone_reports_whether_floats_need_checking() -> None:
    assert check_bounds(b'{"type":"t","x":1e300}') is True
    assert check_bounds(b'{"type":"t","x":1e30}') is False


# -- property: the bounds against a reference ------------------------------------------------

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(15, 30).map(lambda digits: -int("9" * digits))
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from('[]{}",\\0123456789'))
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner, max_size=6)
    ),
    max_leaves=40,
)


def reference_bounds(value: Any, level: int = 1) -> tuple[int, int, int]:
    """(depth, most members, containers) of a container ``value`` at nesting ``level``."""
    children = value.values() if isinstance(value, dict) else value
    depth, widest, count = level, len(value), 1
    for child in children:
        if isinstance(child, (dict, list)):
            d, w, c = reference_bounds(child, level + 1)
            depth, widest, count = max(depth, d), max(widest, w), count + c
    return depth, widest, count


def longest_digit_run(payload: bytes) -> int:
    outside = re.sub(rb'"(?:[^"\\]|\\.)*"', b'""', payload)
    return max((len(run) for run in re.findall(rb"[0-9]+", outside)), default=0)


@settings(
    max_examples=300,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    value=JSON_VALUES,
    ensure_ascii=st.booleans(),
    indent=st.sampled_from([None, 0, 2]),
    depth=st.integers(1, 6),
    width=st.integers(2, 6),
    digits=st.integers(20, 24),
    containers=st.integers(6, 30),
)
def test_parse_json_refuses_exactly_what_breaks_a_bound(
    value: Any,
    ensure_ascii: bool,
    indent: int | None,
    depth: int,
    width: int,
    digits: int,
    containers: int,
) -> None:
    message = {"type": "t", "x": value}
    payload = json.dumps(message, ensure_ascii=ensure_ascii, indent=indent).encode()
    limits = FrameLimits(
        max_depth=depth, max_members=width, max_number_digits=digits, max_containers=containers
    )
    got_depth, got_width, got_containers = reference_bounds(message)
    broken = {
        "max_depth": got_depth > depth,
        "max_members": got_width > width,
        "max_number_digits": longest_digit_run(payload) > digits,
        "max_containers": got_containers > containers,
    }
    try:
        parsed = parse_json(payload, limits)
    except FrameLimitError as exc:
        event(f"refused: {exc.bound}")
        assert broken[exc.bound], f"{exc} although {broken}"
        assert 0 <= exc.offset < len(payload)
    else:
        event("accepted")
        assert not any(broken.values())
        assert parsed == message
