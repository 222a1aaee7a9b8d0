"""Sequential connections to one real node, each made as the CLI makes one (issue 12: the
node refused every connection after its 250th).

A node is started as the README says (``hivemesh node start``, its own Ray). Then
``--count`` connections one after another, each by ``node.client.request`` (what every CLI
command runs: a fresh libp2p host with the home's client key, a dial, one control request,
the host's shutdown), without the CLI process's own start-up. Printed: accepted, refused,
the rate, the first refusal, and the node's RSS and open file descriptors before and after
(a connection that leaked would show there). The reference in the same run is the node's
own first 250 connections, against the rest: the rate must not fall and nothing be refused.

    .venv/bin/python scripts/bench/connections.py [--count 5000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import psutil
import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MiB = 1024 * 1024
LIBP2P_INBOUND_CAP = 250


async def run(
    count: int, addr: str, key: object, swarm_key_file: Path, daemon: psutil.Process
) -> None:
    from node.client import request
    from node.errors import NodeError
    from node.p2p import quiet_libp2p_logging
    from node.swarmkey import SwarmKey
    from protocols import control

    quiet_libp2p_logging()
    swarm_key = SwarmKey.load(swarm_key_file)
    accepted = refused = 0
    first_refusal = ""
    marks: dict[int, float] = {}
    started = time.monotonic()
    for i in range(1, count + 1):
        try:
            with trio.fail_after(30):
                await request(key, addr, control.InfoRequest(), swarm_key=swarm_key, timeout_s=10)
            accepted += 1
        except (NodeError, trio.TooSlowError) as exc:
            refused += 1
            first_refusal = first_refusal or f"#{i}: {exc}"
        if i in (LIBP2P_INBOUND_CAP, count) or i % 1000 == 0:
            marks[i] = time.monotonic() - started
            print(
                f"  after {i:5}: accepted {accepted:5}, refused {refused:5}, "
                f"{i / marks[i]:6.1f} connections/s overall, node RSS "
                f"{daemon.memory_info().rss / MiB:.0f} MB, fds {daemon.num_fds()}",
                flush=True,
            )
    total = time.monotonic() - started
    first = marks.get(LIBP2P_INBOUND_CAP)
    print(f"\naccepted {accepted}, refused {refused} of {count} in {total:.1f}s")
    if first is not None and count > LIBP2P_INBOUND_CAP:
        rest = (count - LIBP2P_INBOUND_CAP) / (total - first)
        print(
            f"rate: first {LIBP2P_INBOUND_CAP}: {LIBP2P_INBOUND_CAP / first:.1f}/s; "
            f"the {count - LIBP2P_INBOUND_CAP} after them: {rest:.1f}/s"
        )
    if first_refusal:
        print(f"first refusal: {first_refusal}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    from node.home import Home
    from node.localswarm import LocalSwarm

    with (
        tempfile.TemporaryDirectory(prefix="hm-conns-") as tmp,
        LocalSwarm(Path(tmp), num_cpus=1) as local,
    ):
        node = local.wait_ready(local.start("a", "none"))
        daemon = psutil.Process(node.proc.pid)
        key = Home(node.home).load_client_key()
        print(
            f"node pid {daemon.pid}: RSS {daemon.memory_info().rss / MiB:.0f} MB, "
            f"fds {daemon.num_fds()}; {args.count} sequential CLI-style connections"
        )
        trio.run(run, args.count, node.addr, key, local.swarm_key_file, daemon)


if __name__ == "__main__":
    main()
