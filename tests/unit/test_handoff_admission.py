"""Per-peer offer rates and the fair pool of peer slots (pure bookkeeping and trio events)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from node.handoff.admission import OfferRate, SlotPool, split_slots


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_split_slots_reserves_a_share_for_the_node_itself() -> None:
    assert split_slots(4, 0.25) == (3, 1)
    assert split_slots(16, 0.25) == (12, 4)
    assert split_slots(8, 0.0) == (8, 0)
    assert split_slots(2, 0.9) == (1, 1)  # peers always keep one slot
    assert split_slots(1, 0.5) == (1, 0)


def test_offer_rate_allows_a_burst_then_refills_per_peer() -> None:
    clock = Clock()
    rate = OfferRate(60, clock=clock)  # one a second
    assert all(rate.take("p") == 0 for _ in range(60))
    wait = rate.take("p")
    assert wait == pytest.approx(1.0)
    assert rate.take("q") == 0  # another peer has its own bucket
    clock.now += 0.5
    assert rate.take("p") == pytest.approx(0.5)
    clock.now += 0.5
    assert rate.take("p") == 0


async def test_slots_go_to_the_peer_running_the_fewest_then_the_oldest_waiter() -> None:
    pool = SlotPool(2)
    got: list[str] = []

    async def step(peer: str, hold: trio.Event) -> None:
        await pool.acquire(peer)
        got.append(peer)
        await hold.wait()
        pool.release(peer)

    holds = {name: trio.Event() for name in ("g1", "g2", "g3", "g4", "h1")}
    async with trio.open_nursery() as nursery:
        for name in ("g1", "g2", "g3", "g4"):  # a greedy peer queues four steps first
            nursery.start_soon(step, "greedy", holds[name])
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(step, "honest", holds["h1"])
        await trio.testing.wait_all_tasks_blocked()
        assert got == ["greedy", "greedy"] and pool.waiting == 3
        holds["g1"].set()
        await trio.testing.wait_all_tasks_blocked()
        # the freed slot goes to the honest peer (running 0), not to greedy's older waiters
        assert got[-1] == "honest" and pool.running == {"greedy": 1, "honest": 1}
        for hold in holds.values():
            hold.set()
    assert pool.used == 0 and pool.waiting == 0 and got.count("greedy") == 4


async def test_a_waiter_cancelled_leaves_the_queue_and_no_slot_leaks() -> None:
    pool = SlotPool(1)
    await pool.acquire("a")
    with trio.move_on_after(0.01):
        await pool.acquire("b")
    assert pool.waiting == 0
    pool.release("a")
    assert pool.used == 0
    await pool.acquire("b")
    assert pool.running == {"b": 1}
