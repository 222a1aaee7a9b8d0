"""Canonical JSON (RFC 8785): the bytes a receipt's hashes are computed over must be the same
in every language, so they are checked against what ECMAScript's JSON.stringify prints."""

from __future__ import annotations

import hashlib

import pytest

from protocols.canonical import canonical_json, json_sha256
from protocols.errors import LocalProtocolError

# (value, what ECMAScript prints for it), checked with Node.js 20
NUMBERS = [
    (0, "0"),
    (-0.0, "0"),
    (1.5, "1.5"),
    (0.1, "0.1"),
    (0.1 + 0.2, "0.30000000000000004"),
    (1e20, "100000000000000000000"),
    (1e21, "1e+21"),
    (123456789012345680000, "123456789012345680000"),
    (2**53 + 2, "9007199254740994"),
    (1e-6, "0.000001"),
    (1e-7, "1e-7"),
    (1.234e-7, "1.234e-7"),
    (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e+308"),
    (-1.5e-9, "-1.5e-9"),
    (12345.678, "12345.678"),
    (100, "100"),
]


@pytest.mark.parametrize(("value", "text"), NUMBERS)
def test_numbers_print_as_ecmascript_prints_them(value: float, text: str) -> None:
    assert canonical_json(value) == text.encode()


def test_objects_sort_by_utf16_code_units_and_strings_escape_minimally() -> None:
    value = {"b": 1, "a": [True, None, 'x\u0001\u2028"é😀'], "€": 2, "😀": 3, "\ufb01": 4}
    # U+1F600 (a surrogate pair, D83D…) sorts before U+FB01 in UTF-16, unlike in code points
    expected = '{"a":[true,null,"x\\u0001\u2028\\"é😀"],"b":1,"€":2,"😀":3,"ﬁ":4}'
    assert canonical_json(value) == expected.encode()


def test_equal_values_hash_equal_whatever_their_python_form() -> None:
    assert json_sha256({"x": 1.0, "y": [1, 2]}) == json_sha256({"y": (1, 2), "x": 1})
    assert json_sha256({"x": 1}) == hashlib.sha256(b'{"x":1}').hexdigest()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1: 2}, {"x": object()}])
def test_what_has_no_json_form_is_refused(value: object) -> None:
    with pytest.raises(LocalProtocolError):
        canonical_json(value)
