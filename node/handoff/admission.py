"""Who gets to run what on this node: per-peer quotas and the fair pool of peer slots.

Peers share a node, they do not own it:

* :class:`OfferRate` — offers per minute per peer (a token bucket; the clock is injected);
* :class:`SlotPool` — how many delegated steps run on the node's Ray at once. It has fewer
  slots than the node has (a share is reserved for the node's own workflows), and when a slot
  frees it goes to the waiting peer that runs the fewest steps now (then the oldest waiter),
  so one greedy peer cannot starve the others.

In-flight and size limits are checked by the server from its own bookkeeping.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import trio


def split_slots(slots: int, reserved_share: float) -> tuple[int, int]:
    """(slots for peers, slots reserved for the node's own steps) out of ``slots``.

    At least one slot is reserved whenever the node has two or more and the share is not 0;
    peers always get one."""
    if slots <= 1 or reserved_share <= 0:
        return max(1, slots), 0
    reserved = min(slots - 1, max(1, math.ceil(slots * reserved_share)))
    return slots - reserved, reserved


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class OfferRate:
    """At most ``per_minute`` offers per peer, in bursts of up to ``per_minute``."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, peer: str) -> float:
        """Count one offer of ``peer``. Returns 0 if allowed, else seconds until it would be."""
        now = self._clock()
        rate = self.per_minute / 60.0
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) > 4096:
                self._forget_full(now)
            bucket = self._buckets[peer] = _Bucket(float(self.per_minute), now)
        bucket.tokens = min(float(self.per_minute), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def _forget_full(self, now: float) -> None:
        rate = self.per_minute / 60.0
        for peer, b in list(self._buckets.items()):
            if b.tokens + (now - b.stamp) * rate >= self.per_minute:
                del self._buckets[peer]


class SlotPool:
    """``slots`` places to run delegated steps, shared fairly between peers."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a slot pool needs at least one slot")
        self.slots = slots
        self.used = 0
        self.running: Counter[str] = Counter()
        self._waiting: dict[str, deque[tuple[int, trio.Event]]] = {}
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    def waiting_for(self, peer: str) -> int:
        return len(self._waiting.get(peer, ()))

    async def acquire(self, peer: str) -> None:
        """Wait for a slot for one step of ``peer``; :meth:`release` it afterwards."""
        if self.used < self.slots and not self._waiting:
            self._take(peer)
            return
        entry = (next(self._seq), trio.Event())
        self._waiting.setdefault(peer, deque()).append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():  # handed a slot just as we were cancelled: give it back
                self.release(peer)
            else:
                queue = self._waiting[peer]
                queue.remove(entry)
                if not queue:
                    del self._waiting[peer]
            raise

    def release(self, peer: str) -> None:
        self.used -= 1
        self.running[peer] -= 1
        if self.running[peer] <= 0:
            del self.running[peer]
        self._hand_over()

    def _take(self, peer: str) -> None:
        self.used += 1
        self.running[peer] += 1

    def _hand_over(self) -> None:
        while self.used < self.slots and self._waiting:
            # the peer running the fewest steps, then the one waiting longest
            peer = min(self._waiting, key=lambda p: (self.running[p], self._waiting[p][0][0]))
            queue = self._waiting[peer]
            _, event = queue.popleft()
            if not queue:
                del self._waiting[peer]
            self._take(peer)
            event.set()
