"""Steps waiting for a free slot at any node that offers their tool.

When placement finds every provider of a step's tool full (``Decision.busy``), the step
waits here instead of queueing behind one provider: in line with the other steps that need
the same tool (and placement constraint), first come first served. A step keeps its place in
line (its :class:`Ticket`) until it gets a slot or gives up. Each step of this node that ends
frees a slot and wakes the first waiter of every line that is not awake already (the slot may
suit any of them); a waiter that gets a slot leaves the line and wakes the next one (more may
be free: a peer's capacity grows with its record). The first of a line also looks again every
``poll_s`` (a card may have changed, a peer may have joined); the others every ``idle_s``, in
case a wake went astray.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

import trio


class Ticket:
    """A step's place in a line."""

    __slots__ = ("event", "key")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.event = trio.Event()  # set: a slot may have been freed for it


class SlotWaiters:
    def __init__(self, *, poll_s: float = 0.1, idle_s: float = 10.0) -> None:
        self.poll_s = poll_s
        self.idle_s = idle_s
        self._lines: dict[Hashable, deque[Ticket]] = {}

    def __len__(self) -> int:
        return sum(len(line) for line in self._lines.values())

    def join(self, key: Hashable) -> Ticket:
        """A place at the end of ``key``'s line."""
        ticket = Ticket(key)
        self._lines.setdefault(key, deque()).append(ticket)
        return ticket

    def leave(self, ticket: Ticket, *, took_slot: bool) -> None:
        """``ticket`` leaves its line: it got a slot (``took_slot``: the next waiter looks
        too), or gave up (a wake meant for it goes to the next waiter)."""
        line = self._lines.get(ticket.key)
        if line is None or ticket not in line:
            return
        line.remove(ticket)
        if took_slot or ticket.event.is_set():
            _wake_first(line)
        if not line:
            del self._lines[ticket.key]

    def freed(self) -> None:
        """A slot was freed somewhere: the first waiter of each line looks again."""
        for line in self._lines.values():
            _wake_first(line)

    async def wait(self, ticket: Ticket) -> None:
        """Wait, in place, until woken or it is time to look again."""
        line = self._lines.get(ticket.key)
        first = line is not None and len(line) > 0 and line[0] is ticket
        with trio.move_on_after(self.poll_s if first else self.idle_s):
            await ticket.event.wait()
        ticket.event = trio.Event()


def _wake_first(line: deque[Ticket]) -> None:
    for ticket in line:
        if not ticket.event.is_set():
            ticket.event.set()
            return
