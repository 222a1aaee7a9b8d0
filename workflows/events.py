"""Event listeners for :func:`workflows.wait_for_event` (Ray Workflows' interface)."""

from __future__ import annotations

import asyncio
import time
from typing import Any


class EventListener:
    """Subclass it: ``poll_for_event`` (async) returns the event; ``event_checkpointed`` is
    called once the event is durably recorded (acknowledge it upstream there).

    The listener is created with no arguments, in the driver's event loop (it occupies no
    Ray worker while it waits).
    """

    def __init__(self) -> None:
        pass

    async def poll_for_event(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    async def event_checkpointed(self, event: Any) -> None:
        pass


class TimerListener(EventListener):
    """An event that happens at a wall-clock time (``time.time()`` seconds)."""

    async def poll_for_event(self, timestamp: float) -> float:
        await asyncio.sleep(max(0.0, timestamp - time.time()))
        return timestamp
