"""Steps waiting for a free slot (node.slot_wait): lines per tool, first come first served,
a wake per freed slot, the first of a line looking again on its own. Virtual time only."""

from __future__ import annotations

import pytest
import trio

from node.slot_wait import SlotWaiters


async def _until(predicate: object) -> None:
    assert callable(predicate)
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.001)


async def test_a_freed_slot_wakes_the_first_of_each_line_in_order(
    autojump_clock: trio.abc.Clock,
) -> None:
    slots = SlotWaiters(poll_s=100, idle_s=1000)
    woken: list[str] = []

    async def waiter(key: str, name: str) -> None:
        await slots.wait(key)
        woken.append(name)

    async with trio.open_nursery() as nursery:
        for name in ("a1", "a2", "a3"):
            nursery.start_soon(waiter, "a", name)
            await trio.sleep(0.01)  # in this order
        nursery.start_soon(waiter, "b", "b1")
        await _until(lambda: len(slots) == 4)
        slots.freed()
        await _until(lambda: len(woken) == 2)
        assert sorted(woken) == ["a1", "b1"]  # one per line, the first of each
        slots.wake_next("a")  # a1 got a slot: the next of its line looks too
        await _until(lambda: len(woken) == 3)
        assert woken[-1] == "a2"
        slots.freed()
        await _until(lambda: len(woken) == 4)
        assert woken[-1] == "a3" and len(slots) == 0
    assert trio.current_time() < 1  # woken, not timed out


async def test_a_waiter_back_at_the_front_keeps_its_place(autojump_clock: trio.abc.Clock) -> None:
    slots = SlotWaiters(poll_s=100, idle_s=1000)
    woken: list[str] = []

    async def waiter(name: str, front: bool) -> None:
        await slots.wait("k", front=front)
        woken.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "later", False)
        await trio.sleep(0.01)
        nursery.start_soon(waiter, "woken before", True)
        await _until(lambda: len(slots) == 2)
        slots.freed()
        await _until(lambda: len(woken) == 1)
        assert woken == ["woken before"]
        slots.freed()


async def test_only_the_first_of_a_line_polls(autojump_clock: trio.abc.Clock) -> None:
    slots = SlotWaiters(poll_s=0.1, idle_s=2.0)
    ended: dict[str, float] = {}

    async def waiter(name: str) -> None:
        await slots.wait("k")
        ended[name] = trio.current_time()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "first")
        await trio.sleep(0.01)
        nursery.start_soon(waiter, "second")
    assert ended["first"] - start == pytest.approx(0.1)
    assert ended["second"] - start == pytest.approx(2.01)


async def test_a_canceled_waiter_leaves_its_line(autojump_clock: trio.abc.Clock) -> None:
    slots = SlotWaiters(poll_s=100, idle_s=1000)
    woken: list[str] = []

    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def doomed() -> None:
            with scope:
                await slots.wait("k")
                woken.append("doomed")

        async def patient() -> None:
            await slots.wait("k")
            woken.append("patient")

        nursery.start_soon(doomed)
        await trio.sleep(0.01)
        nursery.start_soon(patient)
        await _until(lambda: len(slots) == 2)
        scope.cancel()  # (its workflow was canceled)
        await _until(lambda: len(slots) == 1)
        slots.freed()  # the slot goes to the next in line
        await _until(lambda: woken == ["patient"])
    assert len(slots) == 0 and trio.current_time() < 1
