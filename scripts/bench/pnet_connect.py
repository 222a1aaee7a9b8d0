"""Connection set-up with and without the swarm key, on loopback.

Two hivemesh libp2p hosts (node/p2p) in one trio run: for each round, a dialler connects
to a listener (TCP + private-network handshake + Noise + yamux), opens the first stream
(multistream-select of the protocol) and gets a 1-byte echo back, then disconnects. Rounds
alternate between an open pair (no key) and a private pair (same swarm key) so that drift of
the machine's speed hits both alike. Also timed: how long a stranger (another key, no key)
takes to be refused. Prints medians and 90th percentiles, in milliseconds.

    .venv/bin/python scripts/bench/pnet_connect.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Awaitable, Callable

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from node.errors import NotInSwarmError
from node.p2p import P2PHost, P2PStream, quiet_libp2p_logging
from node.swarmkey import SwarmKey

ECHO = "/bench/echo/1.0.0"


async def echo(stream: P2PStream) -> None:
    data = await stream.read(1)
    await stream.write(data)
    await stream.close()


def host(key: SwarmKey | None) -> P2PHost:
    h = P2PHost(create_new_key_pair(), swarm_key=key, handshake_timeout_s=5)
    h.set_handler(ECHO, echo)
    return h


async def one_round(dialer: P2PHost, listener: P2PHost) -> tuple[float, float]:
    """(connect ms, first stream + echo ms)."""
    t0 = time.perf_counter()
    await dialer.connect(listener.peer_id, listener.addrs())
    t1 = time.perf_counter()
    stream = await dialer.open_stream(listener.peer_id, ECHO)
    await stream.write(b"x")
    assert await stream.read(1) == b"x"
    t2 = time.perf_counter()
    await stream.close()
    await dialer.disconnect(listener.peer_id)
    # wait until both sides dropped the connection, so the next round dials afresh
    with trio.fail_after(5):
        while dialer.is_connected(listener.peer_id) or listener.is_connected(dialer.peer_id):
            await trio.sleep(0.001)
    return (t1 - t0) * 1000, (t2 - t1) * 1000


async def refusal_ms(stranger_key: SwarmKey | None, listener: P2PHost) -> float:
    # a fresh stranger each time: libp2p remembers a failed peer for 60 s
    dialer = P2PHost(create_new_key_pair(), swarm_key=stranger_key, handshake_timeout_s=5)
    async with dialer.run(["/ip4/127.0.0.1/tcp/0"]):
        t0 = time.perf_counter()
        try:
            await dialer.connect(listener.peer_id, listener.addrs())
        except NotInSwarmError:
            return (time.perf_counter() - t0) * 1000
    raise AssertionError("a stranger connected, or failed for another reason")


def summary(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
    return f"{statistics.median(values):7.2f} {p90:7.2f}"


async def main(rounds: int) -> None:
    key = SwarmKey.generate()
    open_a, open_b, key_a, key_b = host(None), host(None), host(key), host(key)
    strangers = [("another key", SwarmKey.generate()), ("no key", None)]
    results: dict[str, tuple[list[float], list[float]]] = {
        "open (no key)": ([], []),
        "private (swarm key)": ([], []),
    }
    refusals: dict[str, list[float]] = {name: [] for name, _ in strangers}
    listen = ["/ip4/127.0.0.1/tcp/0"]
    async with (
        open_a.run(listen),
        open_b.run(listen),
        key_a.run(listen),
        key_b.run(listen),
    ):
        pairs: list[tuple[str, Callable[[], Awaitable[tuple[float, float]]]]] = [
            ("open (no key)", lambda: one_round(open_a, open_b)),
            ("private (swarm key)", lambda: one_round(key_a, key_b)),
        ]
        for _ in range(10):  # warm-up, not counted
            for _, run in pairs:
                await run()
        for i in range(rounds):
            for name, run in pairs if i % 2 == 0 else reversed(pairs):
                connect, first = await run()
                results[name][0].append(connect)
                results[name][1].append(first)
        for _ in range(min(rounds, 50)):
            for name, stranger_key in strangers:
                refusals[name].append(await refusal_ms(stranger_key, key_b))

    print(f"connection set-up on 127.0.0.1, {rounds} rounds each (ms: median, p90)")
    print(f"{'':22} {'dial+Noise+yamux':>16} {'first stream':>16} {'total':>16}")
    for name, (connects, firsts) in results.items():
        totals = [c + f for c, f in zip(connects, firsts, strict=True)]
        print(f"{name:22} {summary(connects):>16} {summary(firsts):>16} {summary(totals):>16}")
    extra = statistics.median(results["private (swarm key)"][0]) - statistics.median(
        results["open (no key)"][0]
    )
    print(f"the private-network handshake adds {extra:+.2f} ms to a dial (medians)")
    print("a stranger dialling a private node is refused after (ms: median, p90):")
    for name, values in refusals.items():
        print(f"  {name:12} {summary(values)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    quiet_libp2p_logging()
    trio.run(main, args.rounds)
