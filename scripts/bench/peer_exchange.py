"""Peer-exchange amplification and the cost of trust checks, on loopback.

    .venv/bin/python scripts/bench/peer_exchange.py             # 35 s window, as in issue 8
    .venv/bin/python scripts/bench/peer_exchange.py --seconds 10

Starts one real node (default config, its own home in a temp folder, a local Ray with 1 CPU),
then a separate libp2p host with its own key sends it one discovery hello naming 256 made-up
peers, all at a loopback port where the script counts TCP connection attempts: first with bare
addresses, then with addresses in records each peer signed. Prints the attempts and the peer
table's size after each window, then the cost of signing and verifying an address record and
of one placement decision.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import trio  # noqa: E402
from libp2p.crypto.ed25519 import create_new_key_pair  # noqa: E402
from libp2p.peer.id import ID  # noqa: E402

from node.addr_record import sign_addr_record, verify_addr_record  # noqa: E402
from node.config import NodeConfig  # noqa: E402
from node.daemon import Node, start_ray, stop_ray  # noqa: E402
from node.home import Home  # noqa: E402
from node.p2p import P2PHost  # noqa: E402
from node.scheduler import Candidate, Evidence, place  # noqa: E402
from protocols import discovery  # noqa: E402
from protocols.stream import MessageStream  # noqa: E402


def _per_call_us(fn: Any, n: int) -> float:
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(runs)


async def _attack(node: Node, seconds: float) -> list[tuple[str, int, int]]:
    attempts = 0

    async def count(conn: trio.SocketStream) -> None:
        nonlocal attempts
        attempts += 1
        await conn.aclose()

    attacker = P2PHost(create_new_key_pair())
    rows = []
    async with trio.open_nursery() as nursery, attacker.run(["/ip4/127.0.0.1/tcp/0"]):
        listeners = await nursery.start(trio.serve_tcp, count, 0)
        port = listeners[0].socket.getsockname()[1]
        victim = f"/ip4/127.0.0.1/tcp/{port}"
        keys = [create_new_key_pair() for _ in range(256)]
        ids = [str(ID.from_pubkey(k.public_key)) for k in keys]
        card = discovery.NodeCard(peer_id=attacker.peer_id, addrs=attacker.addrs(), version="0")
        await attacker.connect(node.peer_id, node.host.addrs())
        variants = {
            "bare addresses": [
                discovery.PeerRef(peer_id=i, addrs=[f"{victim}/p2p/{i}"]) for i in ids
            ],
            "signed records": [
                discovery.PeerRef(
                    peer_id=i,
                    addrs=[f"{victim}/p2p/{i}"],
                    addr_record=sign_addr_record(k, [victim], 1).encoded,
                )
                for i, k in zip(ids, keys, strict=True)
            ],
        }
        for label, refs in variants.items():
            before = attempts
            ms = MessageStream(
                await attacker.open_stream(node.peer_id, discovery.PROTOCOL_ID), discovery.CODEC
            )
            await ms.send(discovery.Hello(card=card, peers=refs))
            await ms.receive()
            await ms.close()
            await trio.sleep(seconds)  # a measurement window, not synchronisation
            rows.append((label, attempts - before, len(node.registry)))
        nursery.cancel_scope.cancel()
    return rows


async def _run(node: Node, seconds: float) -> list[tuple[str, int, int]]:
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        rows = await _attack(node, seconds)
        nursery.cancel_scope.cancel()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=35.0, help="window after each hello")
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    key = create_new_key_pair()
    peer = str(ID.from_pubkey(key.public_key))
    record = sign_addr_record(key, ["/ip4/127.0.0.1/tcp/4001"], 1)
    sign_us = _per_call_us(lambda: sign_addr_record(key, ["/ip4/127.0.0.1/tcp/4001"], 1), 500)
    verify_us = _per_call_us(lambda: verify_addr_record(record.encoded, peer), 500)
    peers = [
        Candidate(f"peer-{i:03d}", False, "1.0.0", 0, 4, 5.0, 0, Evidence(done=i, sustained=1))
        for i in range(100)
    ]
    place_2_us = _per_call_us(lambda: place("t", None, peers[:2]), 2000)
    place_100_us = _per_call_us(lambda: place("t", None, peers), 200)

    with tempfile.TemporaryDirectory(prefix="hm-bench-px") as tmp:
        home = Home(Path(tmp) / "node")
        home.init()
        config = NodeConfig.model_validate({"tools": "none", "ray": {"num_cpus": 1}})
        cpus, _ = start_ray(config.ray)
        try:
            node = Node(config, home, cpus=cpus)
            rows = trio.run(_run, node, args.seconds)
        finally:
            stop_ray()

    limits = config.discovery
    print(f"one hello naming 256 made-up peers at one loopback address, {args.seconds:g} s each")
    print(
        f"(discovery.max_dials_per_exchange={limits.max_dials_per_exchange}, "
        f"max_peers_per_source={limits.max_peers_per_source}, "
        f"dial_backoff_s={limits.dial_backoff_s:g}..{limits.dial_backoff_max_s:g})"
    )
    print(f"{'refs':<16} {'connection attempts':>20} {'peer table':>11}")
    for label, count, size in rows:
        print(f"{label:<16} {count:>20} {size:>11}")
    print()
    print(f"address record: sign {sign_us:.0f} µs, verify {verify_us:.0f} µs")
    print(f"place(): 2 peers {place_2_us:.1f} µs, 100 peers {place_100_us:.0f} µs")


if __name__ == "__main__":
    main()
