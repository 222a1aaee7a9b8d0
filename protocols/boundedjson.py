"""Parsing a frame's JSON within :class:`~protocols.limits.FrameLimits`.

Python's ``json`` recurses once per nesting level (deep input ends in RecursionError), turns
any digit string into an int (100,000 digits end in ValueError after real work), and builds
every array and object it meets. So the bounds are checked on the payload bytes first, and
``json.loads`` only sees a payload that keeps them.

The check runs in two steps, both at C speed (no Python code per byte or per token):

1. A quick, conservative check built from ``bytes`` methods (``find``, ``replace``,
   ``translate``, ``in``). It removes the strings, reduces what is left to its brackets and
   commas, and peels the innermost arrays/objects off in at most ``max_depth`` passes. A
   frame that passes it keeps every bound; a frame that does not is suspect.
2. For a suspect frame only, an exact scan: one regular expression per nesting level,
   nested ``max_depth`` deep, with possessive quantifiers so it never backtracks. It names
   the bound that was broken and the byte where, or finds nothing (the quick check is
   conservative: a 65-digit run inside a string trips it), and then ``json.loads`` decides.

A byte-at-a-time Python loop would cost 50-100 times more per byte; ``json``'s own hooks
(``parse_int``, ``object_pairs_hook``) run only after ``json`` has recursed and cannot see
arrays at all. Time and memory are linear in the payload size in every case.
"""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any, NamedTuple

from protocols.errors import (
    FrameDecodeError,
    FrameLimitError,
    NestingTooDeepError,
    NumberOutOfRangeError,
    NumberTooLongError,
    TooManyContainersError,
    TooManyMembersError,
)
from protocols.limits import DEFAULT_LIMITS, FrameLimits

__all__ = ["check_bounds", "parse_json"]

# -- the quick check -------------------------------------------------------------------------

# keeps [ ] , and maps { } to [ ] (json itself rejects a bracket closed by the wrong kind)
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b"[]{},")
_NOT_STRUCTURE_OR_QUOTE = bytes(c for c in range(256) if c not in b'[]{},"')
# digits -> "0", e/E -> "e", the rest -> " " ("+" is deleted): runs of "0" are digit runs,
# and "e000" is an exponent of three or more digits, the only way past 1.8e308
_NUMBERS = bytes(0x30 if 0x30 <= c <= 0x39 else 0x65 if c in b"eE" else 0x20 for c in range(256))
_INNERMOST = re.compile(rb"\[,*\]")
# A frame whose first 8 KiB holds fewer than one string per 256 bytes is cut by jumping
# from quote to quote (memchr speed, a little Python per string); others are translated.
_SAMPLE = 8192
_SPARSE_GAP = 256


def _unescape_quotes(payload: bytes) -> bytes:
    """``payload`` with ``\\\\`` and ``\\"`` removed, so every quote left delimits a string.

    A quote is escaped when an odd run of backslashes precedes it; replacing pairs left to
    right leaves exactly one backslash before such a quote and none before the others.
    """
    # re's search for a literal is faster than bytes' "in" where backslashes abound
    if _ESCAPED_QUOTE.search(payload) is None:
        return payload
    if _ESCAPED_BACKSLASH.search(payload) is not None:
        payload = payload.replace(b"\\\\", b"")
    return payload.replace(b'\\"', b"")


_ESCAPED_QUOTE = re.compile(rb'\\"')
_ESCAPED_BACKSLASH = re.compile(rb"\\\\")


def _outside_strings(text: bytes, budget: int) -> bytes | None:
    """``text`` without its strings (quotes are delimiters only), or None once it has met
    ``budget`` strings: a frame of many small strings is cheaper to translate."""
    parts = []
    find = text.find
    pos = 0
    for _ in range(budget):
        start = find(b'"', pos)
        if start < 0:
            parts.append(text[pos:])
            return b"".join(parts)
        parts.append(text[pos:start])
        end = find(b'"', start + 1)
        if end < 0:  # unterminated: json.loads stops there, so nothing after it counts
            return b"".join(parts)
        pos = end + 1
    return None


def _dense_skeleton(text: bytes) -> bytes:
    """Brackets and commas of ``text`` outside its strings (quotes are delimiters only)."""
    skeleton = text.translate(_BRACKETS, _NOT_STRUCTURE_OR_QUOTE)
    quotes = skeleton.count(b'"')
    # Most strings hold no bracket or comma and shrink to "". If pairing the quotes left to
    # right as "" covers them all, those pairs are the strings (the first quote opens one,
    # and so on), and there is nothing inside them to remove.
    if 2 * skeleton.count(b'""') == quotes:
        return skeleton.translate(None, b'"') if quotes else skeleton
    return b"".join(skeleton.split(b'"')[::2])


def _too_deep_or_wide(skeleton: bytes, limits: FrameLimits) -> bool:
    """Whether some array/object in ``skeleton`` (only ``[``, ``]`` and ``,``) may nest
    deeper than ``max_depth`` or have more than ``max_members`` (or the brackets do not
    balance). False means certainly not."""
    depth, members = limits.max_depth, limits.max_members
    opens = skeleton.count(b"[")
    check_wide = skeleton.count(b",") >= members
    if not check_wide:
        if opens <= depth:
            return False
        # Depth only: remove innermost pairs; a container of height h goes in pass h.
        brackets = skeleton.translate(None, b",")
        for _ in range(depth):
            shorter = brackets.replace(b"[]", b"")
            if b"[" not in shorter:
                return False
            if _slow_shrink(brackets, shorter):
                return not _skeleton_within(skeleton, limits)
            brackets = shorter
        return True
    if opens > _MAX_PEELED:
        return not _skeleton_within(skeleton, limits)
    # Peel off the innermost containers, commas and all: a parent's commas then sit
    # together, so a run of max_members commas is one container with too many members.
    wide = b"," * members
    current = skeleton
    for _ in range(depth + 1):
        if wide in current:
            return True
        if b"[" not in current:
            return False
        peeled = _INNERMOST.sub(b"", current)
        if _slow_shrink(current, peeled):
            return not _skeleton_within(skeleton, limits)
        current = peeled
    return True


# re.sub makes a bytes object per match: past this many containers one regex match over
# the skeleton is cheaper in time and memory.
_MAX_PEELED = 4096


def _slow_shrink(before: bytes, after: bytes) -> bool:
    """Honest frames lose far more than half of what is left in every pass; a frame that
    does not (deep and broad) would make the passes quadratic, so it gets one linear regex."""
    return len(after) > 4096 and 2 * len(after) > len(before)


def _skeleton_within(skeleton: bytes, limits: FrameLimits) -> bool:
    pattern = _skeleton_pattern(limits.max_depth, limits.max_members)
    match = pattern.match(skeleton)
    return match is not None and match.end() == len(skeleton)


@functools.lru_cache(maxsize=8)
def _skeleton_pattern(depth: int, members: int) -> re.Pattern[bytes]:
    """Matches a skeleton within the bounds, one pass and no backtracking.

    A member starts at a comma, or right after the opening bracket (see
    :func:`_exact` for why not elsewhere). Scalars left nothing in the skeleton,
    so a container whose first member is a scalar has one member more than iterations:
    allowing ``members - 1`` iterations keeps the check conservative.
    """
    content = rb"(?:,|(?<=\[)){0,%d}+" % (members - 1)
    for _ in range(depth - 1):
        content = rb"(?:(?:,|(?<=\[))(?:\[%s\])*+){0,%d}+" % (content, members - 1)
    return re.compile(rb"(?:\[%s\])*+" % content)


class _Suspicion(NamedTuple):
    """What the quick check could not rule out."""

    structure: bool  # nesting or members (exact for valid JSON: strings are cut out exactly)
    containers: bool  # too many arrays/objects in all (exact too)
    digits: bool  # a long digit run (counting digits inside strings: conservative)
    big_exponent: bool  # an exponent of three digits or more: parse with the float check


def _quick_check(payload: bytes, limits: FrameLimits, escapes: bool) -> _Suspicion:
    """The quick check of a payload (that holds a backslash if ``escapes``)."""
    if len(payload) <= _SMALL:
        # Most frames are small: if counting the strings' brackets and commas too keeps
        # the bounds, there is nothing to cut out.
        everything = payload.translate(_BRACKETS, _NOT_STRUCTURE)
        if everything.count(b"[") <= limits.max_depth and (
            everything.count(b",") < limits.max_members
        ):
            return _Suspicion(False, False, *_number_flags(payload, limits))
    text = _unescape_quotes(payload) if escapes else payload
    sample = min(len(text), _SAMPLE)
    outside = None
    if text.count(b'"', 0, sample) * _SPARSE_GAP <= sample:
        outside = _outside_strings(text, len(text) // _SPARSE_GAP + 16)
    if outside is None:
        skeleton = _dense_skeleton(text)
        numbers = _number_flags(text, limits)  # the strings' digits count too
    else:
        skeleton = outside.translate(_BRACKETS, _NOT_STRUCTURE)
        numbers = _number_flags(outside, limits)
    return _Suspicion(
        _too_deep_or_wide(skeleton, limits),
        skeleton.count(b"[") > limits.max_containers,
        *numbers,
    )


def _number_flags(text: bytes, limits: FrameLimits) -> tuple[bool, bool]:
    """(a digit run may be too long, an exponent has three digits or more)."""
    # "+" is dropped, so e+300 and e300 look alike (and 1+2 in a string looks like 12:
    # merely conservative)
    numbers = text.translate(_NUMBERS, b"+")
    return b"0" * (limits.max_number_digits + 1) in numbers, b"e000" in numbers


_SMALL = 1024


# -- the exact scan --------------------------------------------------------------------------


def _end(pattern: re.Pattern[bytes], data: bytes, pos: int = 0) -> int:
    """Where ``pattern`` stops matching at ``pos`` (every pattern here matches the empty
    string, so it always matches)."""
    match = pattern.match(data, pos)
    assert match is not None
    return match.end()


_STRING = rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"'
_OTHER = rb'[^\[\]{}",0-9]++'  # whitespace, ':', literals, sign, '.', 'e': all but digits


@functools.lru_cache(maxsize=512)
def _leaf(digits: int) -> bytes:
    return b"|".join([_OTHER, rb"[0-9]{1,%d}+(?![0-9])" % digits, _STRING])


@functools.lru_cache(maxsize=8)
def _exact(depth: int, digits: int, members: int) -> re.Pattern[bytes]:
    """One pass over the payload that stops where a bound is broken.

    The inside of an array/object whose values may nest ``k`` more levels is a loop of
    members; a member starts right after the opening bracket or at a comma (not elsewhere:
    an empty member would retry what just failed), and at most ``members`` of them are
    taken, so the loop stops at the comma of one too many, at a digit run that is too long,
    and at level 0 at a bracket that nests too deep. A container whose inside stopped
    before its closing bracket then takes the rest of the payload into a group of its own,
    so nothing fails and nothing is scanned twice: the group that starts first marks the
    byte where the bound was broken. ``depth`` groups, innermost level first.
    """
    leaf = _leaf(digits)
    inside = rb"(?:(?:,|(?<=[\[{]))(?:%s)*+){0,%d}+" % (leaf, members)
    for _ in range(depth - 1):
        child = rb"[\[{]%s(?:[\]}]|([\s\S]*+))" % inside
        inside = rb"(?:(?:,|(?<=[\[{]))(?:%s|%s)*+){0,%d}+" % (leaf, child, members)
    top = rb"[\[{]%s(?:[\]}]|([\s\S]*+))" % inside
    return re.compile(rb"(?:%s|%s)*+" % (leaf, top), re.DOTALL)


def _exact_scan(payload: bytes, limits: FrameLimits) -> FrameLimitError | None:
    """The first bound ``payload`` breaks, or None if it keeps them all up to its end or
    up to a syntax error (which json.loads then reports)."""
    depth, digits, members = limits.max_depth, limits.max_number_digits, limits.max_members
    match = _exact(depth, digits, members).match(payload)
    assert match is not None  # the pattern matches the empty string
    stops = [match.start(g) for g in range(1, depth + 1) if match.start(g) >= 0]
    pos = min(stops, default=match.end())
    if pos >= len(payload):
        return None
    char = payload[pos]
    if char in b"[{":
        return NestingTooDeepError(
            f"frame JSON nests deeper than the limit of {depth} levels (at byte {pos})",
            bound="max_depth",
            limit=depth,
            offset=pos,
        )
    if 0x30 <= char <= 0x39:
        return _number_too_long(pos, digits)
    if char == 0x2C and stops:
        return TooManyMembersError(
            f"frame JSON has an array or object with more than {members} members "
            f"(member {members + 1} at byte {pos})",
            bound="max_members",
            limit=members,
            offset=pos,
        )
    return None


@functools.lru_cache(maxsize=8)
def _until_long_number(digits: int) -> re.Pattern[bytes]:
    """Matches up to the first digit run longer than ``digits`` outside strings (flat, so
    several times faster than the nested scan when only the digits are in doubt)."""
    return re.compile(rb"(?:[^\"0-9]++|%s|[0-9]{1,%d}+(?![0-9]))*+" % (_STRING, digits), re.DOTALL)


def _long_number(payload: bytes, digits: int) -> NumberTooLongError | None:
    pos = _end(_until_long_number(digits), payload)
    if pos < len(payload) and 0x30 <= payload[pos] <= 0x39:
        return _number_too_long(pos, digits)
    return None


def _number_too_long(pos: int, digits: int) -> NumberTooLongError:
    return NumberTooLongError(
        f"frame JSON has a number with more than {digits} digits in a row (at byte {pos})",
        bound="max_number_digits",
        limit=digits,
        offset=pos,
    )


_NOT_CONTAINER = rb'(?:[^\[{"]++|%s)*+' % _STRING  # up to the next opening bracket
_UNTIL_CONTAINER = re.compile(_NOT_CONTAINER, re.DOTALL)


@functools.lru_cache(maxsize=8)
def _past_containers(count: int) -> re.Pattern[bytes]:
    """Matches up to and including the opening bracket of container number ``count``
    (strings skipped), or fails if there are fewer."""
    return re.compile(rb"(?:%s[\[{]){%d}+" % (_NOT_CONTAINER, count), re.DOTALL)


def _too_many_containers(payload: bytes, limit: int) -> TooManyContainersError | None:
    past = _past_containers(limit).match(payload)
    if past is None:  # fewer than the quick check counted: only in invalid JSON
        return None
    pos = _end(_UNTIL_CONTAINER, payload, past.end())
    if pos < len(payload) and payload[pos] in b"[{":
        return TooManyContainersError(
            f"frame JSON has more than {limit} arrays and objects in all "
            f"(number {limit + 1} at byte {pos})",
            bound="max_containers",
            limit=limit,
            offset=pos,
        )
    return None


# -- text checks json.loads does not make ----------------------------------------------------

# Stops at the first \uD800-\uDFFF escape that is not half of a high+low pair: json.loads
# lets such a lone surrogate through, and it cannot be encoded as UTF-8 again.
_UNTIL_LONE_SURROGATE = re.compile(
    rb"(?:[^\\]++"
    rb"|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|\\u(?![dD][89a-fA-F][0-9a-fA-F]{2})"
    rb"|\\[^u])*+",
    re.DOTALL,
)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_surrogates(payload: bytes) -> None:
    # \u00e9 and \u4f60 are common (Python's json.dumps escapes all non-ASCII); only a
    # \uD800-\uDFFF escape can be a surrogate, and then the regex decides
    if _SURROGATE_ESCAPE.search(payload) is None:
        return
    pos = _end(_UNTIL_LONE_SURROGATE, payload)
    if payload.startswith(b"\\u", pos):
        raise FrameDecodeError(
            "frame JSON has a lone UTF-16 surrogate escape "
            f"{payload[pos : pos + 6].decode('ascii', 'replace')} "
            f"(at byte {pos})"
        )


def _number_offset(payload: bytes, literal: str) -> int:
    """Where ``literal`` stands as a number (between the characters that may surround one);
    the first such place, which a string that holds the same text could precede."""
    found = re.search(rb"(?<=[:,\[\s])" + re.escape(literal.encode()) + rb"(?=[,\]}\s])", payload)
    return found.start() if found else -1


def _finite_float_parser(payload: bytes) -> Any:
    def parse_float(literal: str) -> float:
        value = float(literal)
        if math.isinf(value):
            offset = _number_offset(payload, literal)
            raise NumberOutOfRangeError(
                f"frame JSON has a number beyond the 64-bit float range, {literal[:80]} "
                f"(at byte {offset})",
                bound="float64",
                limit=308,
                offset=offset,
            )
        return value

    return parse_float


def _reject_constant(name: str) -> Any:
    raise FrameDecodeError(f"frame contains {name}, which is not valid JSON")


# Built once, as json.loads builds its own default decoder once (it keeps no state between
# calls that matters): json.loads with keyword arguments builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


# -- the entry points ------------------------------------------------------------------------


def check_bounds(payload: bytes, limits: FrameLimits = DEFAULT_LIMITS) -> bool:
    """Raise the :class:`FrameLimitError` for the first bound ``payload`` breaks (depth,
    members, digits). Returns whether a number may be too big for a float, which only
    parsing can tell (:func:`parse_json` does)."""
    return _check_bounds(payload, limits, _has_tricky_escapes(payload))


_TRICKY_ESCAPE = re.compile(rb'\\(?:["\\]|u[dD][89a-fA-F])')


def _has_tricky_escapes(payload: bytes) -> bool:
    """Whether ``payload`` holds an escape that matters here: ``\\"`` or ``\\\\`` (quotes),
    or ``\\uD800``-``\\uDFFF`` (surrogates). Text with only ``\\n`` and the like has none."""
    return payload.find(b"\\") >= 0 and _TRICKY_ESCAPE.search(payload) is not None


def _check_bounds(payload: bytes, limits: FrameLimits, escapes: bool) -> bool:
    suspicion = _quick_check(payload, limits, escapes)
    error: FrameLimitError | None = None
    # The container count first: its scan is flat and fast, and it bounds what the nested
    # scan (about 100 ns a byte inside containers) has to go through.
    if suspicion.containers:
        error = _too_many_containers(payload, limits.max_containers)
    if error is None and suspicion.structure:
        error = _exact_scan(payload, limits)
    elif error is None and suspicion.digits:
        error = _long_number(payload, limits.max_number_digits)
    if error is not None:
        raise error
    return suspicion.big_exponent


def parse_json(payload: bytes, limits: FrameLimits = DEFAULT_LIMITS) -> Any:
    """The JSON value of a frame's payload; :class:`FrameDecodeError` (or a
    :class:`FrameLimitError`) if it is not UTF-8 JSON within ``limits``."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameDecodeError(f"frame is not UTF-8: {exc.reason} at byte {exc.start}") from None
    escapes = _has_tricky_escapes(payload)
    big_exponent = _check_bounds(payload, limits, escapes)
    if escapes:
        _check_surrogates(payload)
    try:
        if big_exponent:
            return json.loads(
                text, parse_constant=_reject_constant, parse_float=_finite_float_parser(payload)
            )
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        at = len(text[: exc.pos].encode("utf-8"))
        raise FrameDecodeError(f"frame is not JSON: {exc.msg} at byte {at}") from None
    except (ValueError, RecursionError) as exc:  # the bounds make these unreachable
        raise FrameDecodeError(f"frame JSON could not be parsed: {type(exc).__name__}") from None
