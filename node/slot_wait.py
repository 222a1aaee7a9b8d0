"""Steps waiting for a free slot at any node that offers their tool.

When placement finds every provider of a step's tool full (``Decision.busy``), the step
waits here instead of queueing behind one provider: in line with the other steps that need
the same tool (and placement constraint), first come first served. Each step of this node
that ends frees a slot and wakes the first waiter of every line (the slot may suit any of
them); a waiter that gets a slot wakes the next one of its line (more may be free: a peer's
capacity grows with its record), one that finds none goes back to the front. The first of a
line also looks again every ``poll_s`` (a card may have changed, a peer may have joined); the
others every ``idle_s``, in case a wake went astray.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

import trio


class SlotWaiters:
    def __init__(self, *, poll_s: float = 0.1, idle_s: float = 10.0) -> None:
        self.poll_s = poll_s
        self.idle_s = idle_s
        self._lines: dict[Hashable, deque[trio.Event]] = {}

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def freed(self) -> None:
        """A slot was freed somewhere: the first waiter of each line looks again."""
        for line in self._lines.values():
            _wake_first(line)

    def wake_next(self, key: Hashable) -> None:
        """A waiter of ``key``'s line got a slot: the next one looks too."""
        line = self._lines.get(key)
        if line:
            _wake_first(line)

    async def wait(self, key: Hashable, *, front: bool = False) -> None:
        """Wait in ``key``'s line (at its end, or at its ``front`` when a step woken for a
        slot found none) until woken or it is time to look again."""
        line = self._lines.setdefault(key, deque())
        me = trio.Event()
        if front:
            line.appendleft(me)
        else:
            line.append(me)
        try:
            with trio.move_on_after(self.poll_s if line[0] is me else self.idle_s):
                await me.wait()
        finally:
            if me in line:
                line.remove(me)
            if not line:
                self._lines.pop(key, None)


def _wake_first(line: deque[trio.Event]) -> None:
    for event in line:
        if not event.is_set():
            event.set()
            return
