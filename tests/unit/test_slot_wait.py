"""Steps waiting for a free slot (node.slot_wait): lines per tool, first come first served,
a wake per freed slot, places kept across wakes, only the first of a line polling. Virtual
time only."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from node.slot_wait import SlotWaiters, Ticket


async def _until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.001)


class Step:
    """A step as the executor runs it: in line until ``slots`` (a free-slot count) has one."""

    def __init__(self, waiters: SlotWaiters, key: str, name: str, log: list[str]) -> None:
        self.waiters, self.key, self.name, self.log = waiters, key, name, log
        self.looks = 0

    async def run(self, free: list[int]) -> None:
        ticket: Ticket | None = None
        took = False
        try:
            while True:
                self.looks += 1
                if free[0] > 0:
                    free[0] -= 1
                    took = True
                    self.log.append(self.name)
                    return
                if ticket is None:
                    ticket = self.waiters.join(self.key)
                await self.waiters.wait(ticket)
        finally:
            if ticket is not None:
                self.waiters.leave(ticket, took_slot=took)


async def test_freed_slots_go_to_the_lines_in_order(autojump_clock: trio.abc.Clock) -> None:
    waiters = SlotWaiters(poll_s=100, idle_s=1000)
    log: list[str] = []
    free = [0]
    async with trio.open_nursery() as nursery:
        for key, name in (("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1")):
            nursery.start_soon(Step(waiters, key, name, log).run, free)
            await trio.sleep(0.01)  # in this order
        assert len(waiters) == 4
        free[0] = 1
        waiters.freed()  # one slot: the first of each line looks, one of them gets it
        await _until(lambda: len(log) == 1)
        assert log[0] in ("a1", "b1")
        free[0] = 2
        waiters.freed()
        await _until(lambda: len(log) == 3)
        assert set(log) == {"a1", "b1", "a2"}  # (a1 leaving with a slot woke a2)
        free[0] = 1
        waiters.freed()
        await _until(lambda: len(log) == 4)
        assert log[-1] == "a3" and len(waiters) == 0
    assert trio.current_time() < 1  # woken each time, never by a timeout


async def test_a_waiter_woken_for_nothing_keeps_its_place(autojump_clock: trio.abc.Clock) -> None:
    waiters = SlotWaiters(poll_s=100, idle_s=1000)
    log: list[str] = []
    free = [0]
    first, second = Step(waiters, "k", "first", log), Step(waiters, "k", "second", log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(first.run, free)
        await trio.sleep(0.01)
        nursery.start_soon(second.run, free)
        await _until(lambda: len(waiters) == 2)
        waiters.freed()  # the slot went elsewhere: first looks, finds none, stays first
        await _until(lambda: first.looks == 2)
        assert second.looks == 1
        free[0] = 1
        waiters.freed()
        await _until(lambda: log == ["first"])
        free[0] = 1
        waiters.freed()
    assert log == ["first", "second"]


async def test_only_the_first_of_a_line_polls(autojump_clock: trio.abc.Clock) -> None:
    waiters = SlotWaiters(poll_s=0.1, idle_s=10.0)
    log: list[str] = []
    free = [0]
    steps = [Step(waiters, "k", f"s{i}", log) for i in range(5)]
    async with trio.open_nursery() as nursery:
        for step in steps:
            nursery.start_soon(step.run, free)
            await trio.sleep(0.001)
        await trio.sleep(5)
        # the first looked about 50 times, the others once (when they came)
        assert steps[0].looks == pytest.approx(50, abs=2)
        assert [s.looks for s in steps[1:]] == [1, 1, 1, 1]
        free[0] = 5
        waiters.freed()
    assert len(log) == 5 and len(waiters) == 0


async def test_a_canceled_waiter_leaves_and_passes_its_wake_on(
    autojump_clock: trio.abc.Clock,
) -> None:
    waiters = SlotWaiters(poll_s=100, idle_s=1000)
    log: list[str] = []
    free = [0]
    doomed, patient = Step(waiters, "k", "doomed", log), Step(waiters, "k", "patient", log)
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run_doomed() -> None:
            with scope:
                await doomed.run(free)

        nursery.start_soon(run_doomed)
        await trio.sleep(0.01)
        nursery.start_soon(patient.run, free)
        await _until(lambda: len(waiters) == 2)
        scope.cancel()  # (its workflow was canceled)
        await _until(lambda: len(waiters) == 1)
        free[0] = 1
        waiters.freed()
        await _until(lambda: log == ["patient"])
    # a wake that reached a waiter which then gives up goes to the next one
    a, b = waiters.join("x"), waiters.join("x")
    waiters.freed()
    assert a.event.is_set() and not b.event.is_set()
    waiters.leave(a, took_slot=False)
    assert b.event.is_set()
    waiters.leave(b, took_slot=False)
    assert len(waiters) == 0
