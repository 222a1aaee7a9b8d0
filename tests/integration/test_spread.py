"""A fan-out over several providers on real nodes (libp2p + journal + Ray in one trio run):
every provider gets a share in proportion to its free capacity, none gets more of the
delegator's steps at once than its capacity, and nothing fails or runs twice; ``status`` with
``explain`` (and ``hivemesh status --explain``) shows each step's candidates and scores."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from node.cli import main
from node.scheduler import short
from protocols import control
from protocols.versioning import dump_for
from tests.integration.harness import launch, make_node, swarm_key_file, wait_until
from workflows.dsl import parse_workflow
from workflows.status import WorkflowStatus

pytestmark = pytest.mark.usefixtures("ray_cluster")

STEPS = 60


def fan_out(n: int) -> str:
    steps = "".join(
        f"  - name: s{i}\n    tool: util.sleep\n    inputs: [{{name: seconds, value: 0.05}}]\n"
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
            # meanwhile the steps beyond the free slots wait, PENDING, and status says why
            busy = "waiting: all providers of util.sleep busy ("
            with trio.fail_after(30):
                while True:
                    now = await c.control.dispatch(control.StatusRequest(workflow_id=wid))
                    pending = [s for s in now.steps if s.status == "PENDING"]
                    if any((s.waiting or "").startswith(busy) for s in pending):
                        break
                    await trio.sleep(0.01)
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

        # status --explain: every step's candidates, the chosen one (where it ran) first
        plain = await c.control.dispatch(control.StatusRequest(workflow_id=wid))
        assert all(s.placement is None for s in plain.steps)  # only when asked
        reply = await c.control.dispatch(control.StatusRequest(workflow_id=wid, explain=True))
        for step in reply.steps:
            assert step.placement is not None, step
            first, other = step.placement.candidates
            assert (first.node, first.note) == (step.node, "chosen")
            assert {first.node, other.node} == {small.peer_id, big.peer_id}
            assert other.note in ("free", "busy") and not first.local
            assert first.est_ms is not None and first.capacity <= (
                2 if first.node == small.peer_id else 6
            )
        assert any(s.placement and s.placement.candidates[0].done > 0 for s in reply.steps)
        # a 0.3.0 client gets no member it does not know
        assert all("placement" not in s for s in dump_for(reply, "0.3.0")["steps"])

        # the CLI (in a thread: it runs its own trio loop)
        args = ["status", wid, "--explain", "--home", str(tmp_path / "c")]
        args += ["--node", c.host.addrs()[0], "--swarm-key", str(swarm_key_file(tmp_path))]
        out = await trio.to_thread.run_sync(lambda: CliRunner().invoke(main, args))
        assert out.exit_code == 0, out.output
        lines = out.output.splitlines()
        header = [i for i, line in enumerate(lines) if line.split()[:2] == ["candidate", "load"]]
        assert len(header) == STEPS, out.output
        row = lines[header[0] + 1].split()
        assert row[0] in (short(small.peer_id), short(big.peer_id)) and row[-1] == "chosen"
        nursery.cancel_scope.cancel()
