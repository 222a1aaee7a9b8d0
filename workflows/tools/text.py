"""Built-in ``text`` tools: simple string transformations."""

from __future__ import annotations

from workflows.tools._tool import tool


@tool("text.upper", output=str, deterministic=True)
def upper(text: str) -> str:
    """Convert text to upper case."""
    return text.upper()


@tool("text.lower", output=str, deterministic=True)
def lower(text: str) -> str:
    """Convert text to lower case."""
    return text.lower()


@tool("text.reverse", output=str, deterministic=True)
def reverse(text: str) -> str:
    """Reverse a string, character by character."""
    return text[::-1]


@tool("text.word_count", output=int, deterministic=True)
def word_count(text: str) -> int:
    """Count the whitespace-separated words in a text."""
    return len(text.split())
