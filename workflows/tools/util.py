"""Built-in ``util`` tools: plumbing for testing and demos."""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

from pydantic import Field

from workflows.tools._context import current_call
from workflows.tools._packages import PARAMETERS_ENV
from workflows.tools._tool import tool

MAX_SLEEP_SECONDS = 3600.0
MAX_FILL_CHARS = 1 << 30


@tool("util.echo", output=Any, deterministic=True)
def echo(value: Any) -> Any:
    """Return the value it is given."""
    return value


@tool("util.sleep", output=float, deterministic=True)
def sleep(seconds: Annotated[float, Field(ge=0, le=MAX_SLEEP_SECONDS)]) -> float:
    """Sleep for a number of seconds (0 to 3600) and return how long it slept."""
    time.sleep(seconds)
    return float(seconds)


@tool("util.step_key", output=str, deterministic=True)
def step_key() -> str:
    """Return the idempotency key of the step that calls it ("<workflow_id>/<step>"): what a
    tool with external side effects keys them on. Empty outside a workflow step."""
    call = current_call()
    return call.idempotency_key if call is not None else ""


@tool("util.fill", output=str, remote_callable=False)
def fill(size: Annotated[int, Field(ge=0, le=MAX_FILL_CHARS)], char: str = "x") -> str:
    """Return a text of ``size`` copies of ``char`` (up to 1 GiB): a step with a large
    output, to see the node's output limit at work. Not offered to peers."""
    if len(char) != 1:
        raise ValueError(f"char must be one character, not {char!r}")
    return char * size


@tool("util.parameters", output=dict[str, str])
def parameters() -> dict[str, str]:
    """Return the step's parameters (its environment variables from 'parameters'), and
    nothing else of the node's environment. Empty for a step without parameters."""
    names = [n for n in os.environ.get(PARAMETERS_ENV, "").split(",") if n]
    return {name: os.environ.get(name, "") for name in names}
