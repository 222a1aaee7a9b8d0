"""What a running tool knows about its call: the step's idempotency key.

A step can run more than once (at-least-once: a node restart, a lost handoff), so a tool
with external side effects (a payment, an e-mail, a ticket) should key them on
``current_call().idempotency_key`` — ``"<workflow_id>/<step>"``, the same on every node
and every attempt — and skip what it already did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class ToolCallContext:
    idempotency_key: str  # "<workflow_id>/<step>"


_CURRENT: ContextVar[ToolCallContext | None] = ContextVar("hivemesh_tool_call", default=None)


def current_call() -> ToolCallContext | None:
    """The call being run, inside a tool; None outside one (or when called directly)."""
    return _CURRENT.get()


@contextlib.contextmanager
def tool_call(idempotency_key: str | None) -> Iterator[None]:
    """Run a tool with ``current_call()`` set (nothing is set for a key of None)."""
    if idempotency_key is None:
        yield
        return
    token = _CURRENT.set(ToolCallContext(idempotency_key))
    try:
        yield
    finally:
        _CURRENT.reset(token)
