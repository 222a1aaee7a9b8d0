"""End to end: a real ``hivemesh node start`` process under floods (issue 9) keeps its memory
within a stated bound, keeps answering, runs honest workflows, and bans the repeat offender.

The floods (tests/floods.py) come from another process, from libp2p hosts with keys of their
own, members of the node's swarm: thousands of idle streams; many streams each announcing a
4 MiB frame and trickling it; hundreds of connections from hundreds of keys, more than the
node's 250 inbound slots; garbage frames again and again from one key. This process samples
the node's RSS every 50 ms (psutil, from outside), asks ``info`` every 250 ms over a new
connection each time (as the CLI does), and runs one workflow per flood.

The bound: the node holds at most ``max_pending_bytes_total`` of unfinished frames (16 MiB
here, 64 MiB by default); streams (at most 1024, about 10 KB each), connections (at most
250 inbound) and what Python's allocator keeps add less than 48 MiB, measured. So its RSS
stays within baseline + 64 MiB. Without the guard the trickle flood alone took it to
baseline + 160 MB (scripts/bench/floods.py, the "unguarded" rows).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
import trio

from node.home import Home
from node.localswarm import LocalSwarm, NodeProcess
from tests.floods import FloodRound, flood_round

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
PENDING_TOTAL = 16 * MiB
BOUND = PENDING_TOTAL + 48 * MiB
GUARD_ENV = {
    "HIVEMESH_NETWORK__MAX_PENDING_BYTES_TOTAL": str(PENDING_TOTAL),
    "HIVEMESH_NETWORK__MAX_PENDING_BYTES_PER_PEER": str(2 * MiB),
}
SECONDS = 8.0


def flood(local: LocalSwarm, node: NodeProcess, kind: str, scale: float) -> FloodRound:
    key = Home(node.home).load_client_key()
    return trio.run(
        lambda: flood_round(
            kind,
            pid=node.proc.pid,
            addr=node.addr,
            client_key=key,
            swarm_key_file=local.swarm_key_file,
            seconds=SECONDS,
            scale=scale,
        )
    )


def check(round_: FloodRound, node: NodeProcess) -> None:
    growth = round_.peak_rss - round_.baseline_rss
    what = f"{round_.kind} flood ({round_.flooder})"
    assert node.alive(), f"the node died in the {what}:\n{node.log_tail()}"
    assert growth < BOUND, f"RSS grew by {growth / MiB:.0f} MiB in the {what}"
    failed = round_.info_failures
    if round_.kind == "connections":
        # 400 keys for 250 slots: a new connection that arrives while every slot is held by
        # a handshake in progress (none idle to evict) is refused; rare, never most of them
        assert len(failed) * 10 <= len(round_.latencies), f"info failed in the {what}: {failed}"
    else:
        assert not failed, f"info failed in the {what}: {failed[:3]}"
    assert len(round_.latencies) >= 5, f"too few info answers in the {what}"
    # the probes answered (within 5 s); half of them within a second even on a busy machine
    assert statistics.median(round_.latencies) < 1.0, f"info latencies {round_.latencies}"
    assert round_.workflow == "SUCCESSFUL", f"honest workflow in the {what}: {round_.workflow}"


def test_floods_leave_the_node_bounded_answering_and_working(tmp_path: Path) -> None:
    with LocalSwarm(tmp_path, num_cpus=1, env=GUARD_ENV) as local:
        node = local.wait_ready(local.start("a", "util"))

        idle = flood(local, node, "idle", scale=0.5)
        check(idle, node)
        assert idle.flooder.get("streams refused", 0) > 0

        trickle = flood(local, node, "trickle", scale=1.0)
        check(trickle, node)

        crowd = flood(local, node, "connections", scale=1.0)
        check(crowd, node)
        # 400 keys for 250 inbound slots: idle ones made room, nobody was shut out
        assert crowd.flooder.get("connections accepted", 0) > 250

        garbage = flood(local, node, "garbage", scale=1.0)
        check(garbage, node)
        # banned after its 10th garbage frame, then refused at connection
        assert garbage.flooder.get("connections refused", 0) > 0
        assert garbage.flooder.get("streams opened", 0) <= 12

        log = node.log_path.read_text(errors="replace")
        assert "over 128 streams open at once" in log
        banned = [line for line in log.splitlines() if "banned peer" in line]
        assert any("sent a bad frame" in line for line in banned), banned[-5:]
        assert "refused connection from banned peer" in log
