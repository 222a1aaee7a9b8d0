"""Built-in ``util`` tools: plumbing for testing and demos."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from workflows.tools._context import current_call
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


@tool("util.fail", output=Any, remote_callable=False)
def fail(message: str = "failed on purpose", error: str = "RuntimeError") -> Any:
    """Raise an error with ``message``; ``error`` is its type: ValueError, RuntimeError,
    KeyError or TimeoutError. For trying a workflow's error handling (retries, on_error).
    Not offered to peers."""
    kinds: dict[str, type[Exception]] = {
        "ValueError": ValueError,
        "RuntimeError": RuntimeError,
        "KeyError": KeyError,
        "TimeoutError": TimeoutError,
    }
    if error not in kinds:
        raise ValueError(f"error must be one of {', '.join(kinds)}, not {error!r}")
    raise kinds[error](message)


@tool("util.flaky", output=int, remote_callable=False)
def flaky(path: str, failures: Annotated[int, Field(ge=0, le=1000)] = 1) -> int:
    """Count this call in the file at ``path`` (one line per call) and fail with a
    ValueError while it has been called ``failures`` times or fewer; then return the
    number of calls. For trying retries: the file shows how often the step really ran.
    Not offered to peers (it writes a file on the node)."""
    target = Path(path)
    with target.open("a", encoding="utf-8") as out:
        out.write("call\n")
    calls = len(target.read_text(encoding="utf-8").splitlines())
    if calls <= failures:
        raise ValueError(f"flaky: call {calls} of the {failures} that fail")
    return calls
