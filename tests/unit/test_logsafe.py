"""protocols.logsafe: peer-supplied text made safe for a log line or an error message."""

from __future__ import annotations

import logging

import pytest

from protocols import logsafe


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("wf-1/step@peer", "wf-1/step@peer"),
        ("a\nINFO forged line", "a\\nINFO forged line"),
        ("cr\rlf\r\ntab\t", "cr\\rlf\\r\\ntab\\t"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("nul\x00 del\x7f c1\x85", "nul\\x00 del\\x7f c1\\x85"),
        ("line\u2028sep\u2029", "line\\u2028sep\\u2029"),
        ("bidi \u202eevil\u2066", "bidi \\u202eevil\\u2066"),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
        ("grüße 你好 🐝 \\n", "grüße 你好 🐝 \\n"),  # printable text and backslashes stay
    ],
)
def test_control_characters_are_escaped_and_the_rest_kept(text: str, shown: str) -> None:
    assert logsafe(text) == shown


def test_long_text_is_cut_with_a_marker() -> None:
    assert logsafe("x" * 1000, 10) == "xxxxxxxxxx…[990 more characters]"
    assert logsafe("x" * 10, 10) == "x" * 10


def test_the_cut_happens_before_escaping_so_the_cost_is_bounded() -> None:
    shown = logsafe("\n" * 1_000_000, 5)
    assert shown == "\\n" * 5 + "…[999995 more characters]"


def test_applying_it_twice_changes_nothing() -> None:
    once = logsafe("a\nb\x1b\u2028")
    assert logsafe(once) == once


def test_non_strings_are_shown_as_str() -> None:
    assert logsafe(ValueError("bad\nthing")) == "bad\\nthing"
    assert logsafe(42) == "42"


def test_a_forged_line_stays_on_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    handoff_id = "h1\n2026-01-01 INFO node.handoff: handoff h2 accepted"
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("rejected handoff %s", logsafe(handoff_id))
    assert len(caplog.text.splitlines()) == 1
