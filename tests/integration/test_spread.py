"""A fan-out over several providers on real nodes (libp2p + journal + Ray in one trio run):
every provider gets a share in proportion to its free capacity, none gets more of the
delegator's steps at once than its capacity, and nothing fails or runs twice."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import trio

from tests.integration.harness import launch, make_node, wait_until
from workflows.dsl import parse_workflow
from workflows.status import WorkflowStatus

pytestmark = pytest.mark.usefixtures("ray_cluster")

STEPS = 60


def fan_out(n: int) -> str:
    steps = "".join(
        f"  - name: s{i}\n    tool: util.sleep\n    inputs: [{{name: seconds, value: 0.02}}]\n"
        for i in range(n)
    )
    return f"id: fan\nsteps:\n{steps}"  # no outputs: the workflow waits for every step


async def test_a_fan_out_spreads_over_providers_in_proportion_to_capacity(tmp_path: Path) -> None:
    small = make_node(tmp_path, "small", "util", cpus=1)  # capacity 2 (two steps per CPU)
    big = make_node(tmp_path, "big", "util", cpus=3)  # capacity 6
    async with trio.open_nursery() as nursery:
        await launch(nursery, small)
        await launch(nursery, big)
        c = make_node(tmp_path, "c", "none", bootstrap=[*small.host.addrs(), *big.host.addrs()])
        await launch(nursery, c)
        await wait_until(
            lambda: (
                c.registry.has_fresh_card(small.peer_id) and c.registry.has_fresh_card(big.peer_id)
            ),
            what="c learning both providers",
        )
        assert (small.local_capacity, big.local_capacity) == (2, 6)
        peak = {small.peer_id: 0, big.peer_id: 0}

        async def sample() -> None:
            while True:
                for peer in peak:
                    state = c.registry.get(peer)
                    assert state is not None
                    peak[peer] = max(peak[peer], state.outstanding)
                await trio.sleep(0)

        async with trio.open_nursery() as sampler:
            sampler.start_soon(sample)
            wid, _ = await c.workflows.submit(parse_workflow(fan_out(STEPS)), {}, "fan-1")
            with trio.fail_after(120):
                view = await c.workflows.wait(wid)
            sampler.cancel_scope.cancel()
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        ran = Counter(s.node for s in view.steps)
        assert sum(ran.values()) == STEPS and set(ran) == {small.peer_id, big.peer_id}, ran
        # both got a share, the bigger one the larger (exactly 1/4 and 3/4 at equal speeds)
        assert STEPS * 0.1 <= ran[small.peer_id] < ran[big.peer_id], ran
        # never more of c's steps at once than a provider's capacity (its card's claim)
        assert peak[small.peer_id] <= 2 and peak[big.peer_id] <= 6, peak
        # nothing failed or ran twice
        assert all(s.attempts == 1 for s in view.steps)
        assert small.handoff.started_jobs + big.handoff.started_jobs == STEPS
        nursery.cancel_scope.cancel()
