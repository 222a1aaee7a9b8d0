"""Built-in ``math`` tools: arithmetic on numbers.

Numbers are strict ``int | float``: integers stay integers (``add(2, 3)`` returns ``5``, not
``5.0``), and strings or booleans are rejected instead of being coerced to numbers.
"""

from __future__ import annotations

from pydantic import StrictFloat, StrictInt

from workflows.tools._tool import tool

Number = StrictInt | StrictFloat


@tool("math.add", output=Number, deterministic=True)
def add(a: Number, b: Number) -> Number:
    """Add two numbers."""
    return a + b


@tool("math.multiply", output=Number, deterministic=True)
def multiply(a: Number, b: Number) -> Number:
    """Multiply two numbers."""
    return a * b


@tool("math.sum_list", output=Number, deterministic=True)
def sum_list(values: list[Number]) -> Number:
    """Sum a list of numbers (0 for an empty list)."""
    return sum(values)
