"""Peer-supplied text made safe to put in a log line or an error message."""

from __future__ import annotations

import re

# C0 and C1 controls and DEL (a newline forges a log line, ESC drives the terminal), the
# Unicode line and paragraph separators, the bidirectional overrides and isolates (they
# reorder what a reader sees), and lone surrogates (a log handler cannot encode them).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def logsafe(value: object, limit: int = 300) -> str:
    """``value`` as one printable line: control characters escaped, at most ``limit`` of its
    characters kept (a marker says how many were cut).

    Escapes look like Python's (``\\n``, ``\\x1b``, ``\\u2028``). Backslashes are left alone so
    that applying it twice changes nothing; the output is for people, not for parsing back.
    """
    text = value if isinstance(value, str) else str(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    if _UNSAFE.search(text) is not None:
        text = _UNSAFE.sub(_escape, text)
    return f"{text}…[{cut} more characters]" if cut > 0 else text
