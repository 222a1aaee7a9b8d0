"""The tools of ``scripts/chaos.py``: a tool plugin like any other (entry-point group
``hivemesh.tools``), installed for the chaos run's nodes only (chaos.py writes a
``.dist-info`` beside a copy of this file and puts that folder on the nodes' PYTHONPATH).

Each tool is deterministic arithmetic that takes ``seconds`` to run and records every
execution (start, end) in ``$CHAOS_EXEC_DIR/<workflow>__<step>.jsonl``, one JSON line per
event, with the node (``$CHAOS_NODE``) and the time: what the chaos run counts reruns and
recovery times from. Groups: ``cx`` (x + y + 1), ``cy`` ((x + y) * 2), ``cz`` (x + y + 7).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Annotated

from pydantic import Field

from workflows.tools import current_call, tool

MAX_SECONDS = 60.0
MAX_VALUE = 1 << 40


def _record(event: str) -> None:
    folder = os.environ.get("CHAOS_EXEC_DIR")
    call = current_call()
    if not folder or call is None:
        return
    key = call.idempotency_key
    line = json.dumps(
        {
            "key": key,
            "node": os.environ.get("CHAOS_NODE", "?"),
            "pid": os.getpid(),
            "event": event,
            "t": time.time(),
        }
    )
    path = os.path.join(folder, key.replace("/", "__") + ".jsonl")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one short write: atomic with O_APPEND
    finally:
        os.close(fd)


def _work(x: int, y: int, seconds: float, f: Callable[[int], int]) -> int:
    _record("start")
    time.sleep(seconds)
    out = f(x + y)
    _record("end")
    return out


Value = Annotated[int, Field(ge=-MAX_VALUE, le=MAX_VALUE)]
Seconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]


@tool("cx.step", output=int, deterministic=True)
def cx_step(x: Value, seconds: Seconds, y: Value = 0) -> int:
    """x + y + 1, after ``seconds``."""
    return _work(x, y, seconds, lambda v: v + 1)


@tool("cy.step", output=int, deterministic=True)
def cy_step(x: Value, seconds: Seconds, y: Value = 0) -> int:
    """(x + y) * 2, after ``seconds``."""
    return _work(x, y, seconds, lambda v: v * 2)


@tool("cz.step", output=int, deterministic=True)
def cz_step(x: Value, seconds: Seconds, y: Value = 0) -> int:
    """x + y + 7, after ``seconds``."""
    return _work(x, y, seconds, lambda v: v + 7)
