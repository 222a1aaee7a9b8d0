"""Canonical JSON (RFC 8785, the JSON Canonicalization Scheme) and the hashes built on it.

Two nodes that hold the same JSON value produce the same bytes, whatever their language:
object members sorted by the UTF-16 code units of their names, no whitespace, strings with
the minimal escapes of ECMAScript's ``JSON.stringify``, numbers as ECMAScript prints an IEEE
double (``Number.prototype.toString``). A signed receipt hashes step arguments and outputs
this way, so a JavaScript or Go peer can check it.
"""

from __future__ import annotations

import hashlib
import json
import json.encoder
import math
from typing import Any

from protocols.errors import LocalProtocolError

# ECMAScript's JSON.stringify escapes exactly what json's C string encoder (without
# ensure_ascii) escapes: '"', '\\', \b \f \n \r \t by name, other control characters as
# \u00xx, nothing else (checked code point by code point).
_string = json.encoder.encode_basestring


def _number(value: int | float) -> str:
    """ECMAScript's Number::toString of ``value`` seen as an IEEE double."""
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        raise LocalProtocolError("NaN and Infinity have no JSON form")
    if number == 0:
        return "0"
    if number.is_integer() and abs(number) < 2**53:  # exact: the digits of the integer
        return str(int(number))
    # repr gives the shortest round-tripping digits; re-lay them out as ECMAScript does
    sign = "-" if number < 0 else ""
    mantissa, _, exp_text = repr(abs(number)).partition("e")
    exponent = int(exp_text) if exp_text else 0
    int_part, _, frac_part = mantissa.partition(".")
    digits = (int_part + frac_part).lstrip("0")
    point = len(int_part) + exponent  # where the decimal point falls, counted in digits
    if int_part == "0":  # 0.000ddd: leading zeros of the fraction move the point left
        stripped = frac_part.lstrip("0")
        point = exponent - (len(frac_part) - len(stripped))
        digits = stripped
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= point <= 21:
        return sign + digits + "0" * (point - k)
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * (-point) + digits
    exp = point - 1
    exp_str = f"e{'+' if exp >= 0 else '-'}{abs(exp)}"
    if k == 1:
        return sign + digits + exp_str
    return sign + digits[0] + "." + digits[1:] + exp_str


def _utf16_key(name: str) -> bytes:
    return name.encode("utf-16-be")


def _emit(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, (int, float)):
        out.append(_number(value))
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _emit(item, out)
        out.append("]")
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value, key=_key_order)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _emit(value[key], out)
        out.append("}")
    else:
        raise LocalProtocolError(f"{type(value).__name__} has no JSON form")


def _key_order(key: Any) -> bytes:
    if not isinstance(key, str):
        raise LocalProtocolError(f"JSON object names are strings, not {type(key).__name__}")
    return _utf16_key(key)


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical form of a JSON value, as UTF-8 bytes."""
    out: list[str] = []
    _emit(value, out)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError:
        raise LocalProtocolError(
            "a string holds a lone surrogate, which has no JSON form"
        ) from None


def json_sha256(value: Any) -> str:
    """Hex SHA-256 of the canonical JSON of ``value``."""
    return hashlib.sha256(canonical_json(value)).hexdigest()


def json_size_and_sha256(value: Any) -> tuple[int, str]:
    """The length of the canonical JSON of ``value`` and its hex SHA-256, in one pass."""
    data = canonical_json(value)
    return len(data), hashlib.sha256(data).hexdigest()


def rough_json_size(value: Any) -> int:
    """About how long ``value`` is as JSON (json's C encoder; for deciding where to do the
    canonical work, not for anything signed)."""
    try:
        return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    except (TypeError, ValueError):
        return 0
