"""Bounds on what a step may produce: its output, its error text and its traceback.

A step's output larger than the limit is an error of its own
(:class:`~workflows.errors.StepOutputTooLargeError`, naming the limit and the size); a
longer error text or traceback is cut, with a marker that says how much was cut and which
limit cut it. Pure functions, no I/O: the engine applies
them before anything reaches the journal, and the tool runner applies the output limit in
the Ray worker, so a huge output never reaches the process that runs the workflows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from workflows.errors import StepOutputTooLargeError

OUTPUT_LIMIT_NAME = "max_step_output_bytes"
ERROR_LIMIT_NAME = "max_error_chars"
TRACEBACK_LIMIT_NAME = "max_traceback_chars"
TRACEBACK_HEAD = "Traceback (most recent call last):"
MIN_TEXT_LIMIT = 256


@dataclass(frozen=True)
class StepLimits:
    """What one step may produce. ``max_output_bytes`` of None: outputs are not bounded
    (the Python API's default, as in Ray Workflows); the node sets one."""

    max_output_bytes: int | None = None
    max_error_chars: int = 4096
    max_traceback_chars: int = 16384

    def __post_init__(self) -> None:
        if self.max_output_bytes is not None and self.max_output_bytes < 1:
            raise ValueError(f"{OUTPUT_LIMIT_NAME} must be at least 1 (or None for no limit)")
        # room for the marker that says what was cut
        if self.max_error_chars < MIN_TEXT_LIMIT:
            raise ValueError(f"{ERROR_LIMIT_NAME} must be at least {MIN_TEXT_LIMIT}")
        if self.max_traceback_chars < MIN_TEXT_LIMIT:
            raise ValueError(f"{TRACEBACK_LIMIT_NAME} must be at least {MIN_TEXT_LIMIT}")

    @property
    def max_stored_error_bytes(self) -> int:
        """A failed step's exception is journaled (pickled) only up to this size: beyond,
        only its (bounded) text is kept."""
        return 4 * (self.max_error_chars + self.max_traceback_chars)


def check_output_size(size: int, limits: StepLimits, what: str = "the step's output") -> None:
    """Raise :class:`~workflows.errors.StepOutputTooLargeError` if ``size`` bytes are over
    the output limit."""
    if limits.max_output_bytes is not None and size > limits.max_output_bytes:
        raise StepOutputTooLargeError(size, limits.max_output_bytes, what)


def json_size(value: object) -> int:
    """The size in bytes of ``value`` encoded as compact JSON (``separators=(",", ":")``),
    computed without encoding it: strings count their UTF-8 bytes plus quotes (escapes not
    counted, so this is a lower bound for text that needs them), numbers their text.
    Iterative: nesting depth does not matter."""
    total = 0
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += 2 + (len(item) if item.isascii() else len(item.encode("utf-8", "replace")))
        elif item is None or isinstance(item, bool):
            total += 4 if item is None or item is True else 5
        elif isinstance(item, (int, float)):
            total += len(repr(item))
        elif isinstance(item, Mapping):
            total += 2 + max(0, len(item) - 1) + len(item)  # braces, commas, colons
            for key, val in item.items():
                stack.append(str(key))
                stack.append(val)
        elif isinstance(item, (list, tuple)):
            total += 2 + max(0, len(item) - 1)
            stack.extend(item)
        elif isinstance(item, (bytes, bytearray)):
            total += 2 + len(item)
        else:  # not JSON data: its text, as a stand-in
            total += 2 + len(str(item))
    return total


def cut_text(text: str, limit: int, limit_name: str, *, keep: str = "head") -> str:
    """``text`` if it has at most ``limit`` characters; else its first (``keep="head"``)
    or last (``keep="tail"``) characters with a marker saying what was cut, in at most
    ``limit`` characters in all."""
    if len(text) <= limit:
        return text
    marker = f" […{len(text)} characters in all, cut to the {limit_name} of {limit}…] "
    room = max(0, limit - len(marker))
    if keep == "tail":
        return marker.lstrip() + text[len(text) - room :]
    return text[:room] + marker.rstrip()


def bound_error_text(text: str, limits: StepLimits) -> str:
    """An error text within the limits: a traceback in it (from the line that starts one)
    is kept to ``max_traceback_chars``, its last lines (where the error was raised); the
    rest, the message, to ``max_error_chars``, its first characters."""
    at = text.find(TRACEBACK_HEAD)
    if at < 0:
        return cut_text(text, limits.max_error_chars, ERROR_LIMIT_NAME)
    message, traceback = text[:at], text[at:]
    return cut_text(message, limits.max_error_chars, ERROR_LIMIT_NAME) + cut_text(
        traceback, limits.max_traceback_chars, TRACEBACK_LIMIT_NAME, keep="tail"
    )
