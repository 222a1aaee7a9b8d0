"""End to end: a node keeps its place in the swarm. Real ``hivemesh node start`` processes:
the only node offering a tool, started with the default port 0 and bootstrapped once, is
SIGKILLed and restarted from its home with no bootstrap flags. It comes back on its port,
and work submitted to a tool-less node reaches it again within seconds; with its port taken
it comes back on another and is found all the same, because it redials the peers it
remembers.

The nodes join one Ray cluster started for the test (``--ray-address``) instead of each
starting a Ray of its own: four node starts would spend most of the test starting Rays
(about 20 s each on a loaded 2-core machine against 5-8 s to join), and what is tested here
is the node's libp2p side, which is the same either way."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import pytest

from node.localswarm import LocalSwarm, NodeProcess
from tests.integration.harness import ray_head

pytestmark = pytest.mark.e2e

ECHO = """
id: echo
steps:
  - name: e
    tool: util.echo
    inputs: [{name: value, value: 7}]
outputs: [{name: out, value: "{{steps.e.outputs.result}}"}]
"""


def port_of(node: NodeProcess) -> int:
    return int(node.addr.split("/tcp/")[1].split("/")[0])


def routed(
    local: LocalSwarm, hub: NodeProcess, provider: NodeProcess, wf: Path, *, check: bool = False
) -> float:
    """Submit ``wf`` to ``hub`` (no tools) and wait: it can only succeed on ``provider``,
    the one node with util tools (``check``: ask the hub where it ran, too). Returns the
    seconds it took."""
    started = time.monotonic()
    out = local.cli("submit", str(wf), "--home", str(hub.home), "--wait", "--json", timeout_s=90)
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "SUCCESSFUL" and result["outputs"] == {"out": 7}, result
    if check:
        status = local.cli("status", result["workflow_id"], "--home", str(hub.home), "--json")
        assert [s["node"] for s in json.loads(status.stdout)["steps"]] == [provider.peer_id]
    return took


@pytest.mark.timeout(240)  # measured on 2 cores shared with other work: 44 s at load 12-16,
# up to 170 s at load 20-25 (starting the Ray head and four nodes is most of it); every wait
# inside is bounded on its own
def test_a_killed_node_restarted_without_bootstrap_is_found_again(tmp_path: Path) -> None:
    wf = tmp_path / "echo.yaml"
    wf.write_text(ECHO)
    with (
        ray_head(num_cpus=2, timeout_s=60) as head,
        LocalSwarm(
            tmp_path / "swarm", env=head.env, extra_args=["--ray-address", head.address]
        ) as local,
    ):
        hub = local.wait_ready(local.start("hub", "none"))
        util = local.wait_ready(local.start("util", "util", bootstrap=[hub.addr]))
        port = port_of(util)
        stored = json.loads((util.home / "peers.json").read_text())
        assert [p["peer_id"] for p in stored["peers"]] == [hub.peer_id]

        # SIGKILL, and back with no bootstrap: on the same port, and routed to again
        util.stop(signal.SIGKILL)
        again = local.wait_ready(local.start("util-again", "util", home=util.home))
        assert again.peer_id == util.peer_id and port_of(again) == port
        took = routed(local, hub, again, wf)
        assert took < 30, f"routed to the restarted node only after {took:.1f}s"

        # SIGKILL with its port taken meanwhile: a new port, said in one line; the hub
        # cannot know it, so the node is found because it redials the hub it remembers
        again.stop(signal.SIGKILL)
        with socket.socket() as squatter:
            # (SO_REUSEADDR: the old node's connections may linger in TIME_WAIT there)
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            moved = local.wait_ready(local.start("util-moved", "util", home=util.home))
            assert port_of(moved) != port
            notes = [line for line in moved.log_tail(200).splitlines() if "is not free" in line]
            assert len(notes) == 1 and f"listen port {port} " in notes[0], moved.log_tail()
            took = routed(local, hub, moved, wf, check=True)
            assert took < 30, f"routed to the moved node only after {took:.1f}s"
