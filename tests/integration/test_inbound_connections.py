"""A node keeps accepting connections however many have come and gone (issue 12).

py-libp2p 0.8.1 held each inbound connection's slot of its inbound limit (250) for the
swarm's lifetime, so a node refused every connection after its 250th; node/p2p/inbound.py
gives the slot back when the connection closes. Real hosts on 127.0.0.1 (port 0), each
client with its own key, in the node's private swarm. The node offers no tools, so it never
calls Ray: these tests do not need the session's Ray.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from node.daemon import Node
from node.p2p import P2PHost
from protocols import control
from protocols.stream import MessageStream
from tests.integration.harness import launch, make_node, swarm_key, swarm_key_file, wait_until

LIBP2P_INBOUND_CAP = 250  # py-libp2p's max_connections - min_connections


async def info_over_new_connection(client: P2PHost, node: Node) -> None:
    """Connect, one control ``info`` request, answered; the caller disconnects."""
    peer = await client.connect_addr(node.host.addrs()[0])
    stream = await client.open_stream(peer, control.PROTOCOL_ID)
    ms = MessageStream(stream, control.RESPONSE_CODEC)
    await ms.send(control.InfoRequest())
    reply = await ms.receive_within(5)
    assert isinstance(reply, control.Info) and reply.peer_id == node.peer_id
    await ms.close()


@asynccontextmanager
async def running(hosts: list[P2PHost]) -> AsyncIterator[None]:
    """Every host listening while the body runs; started and stopped concurrently (a
    host's shutdown takes a few tenths of a second)."""
    stop = trio.Event()

    async def run(host: P2PHost, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with host.run(["/ip4/127.0.0.1/tcp/0"]):
            task_status.started()
            await stop.wait()

    async with trio.open_nursery() as nursery:
        for host in hosts:
            await nursery.start(run, host)
        try:
            yield
        finally:
            stop.set()


# The node and hundreds of peers share one trio loop on a machine that may be busy: the
# private-network handshake gets more than its default 1.5 s.
HANDSHAKE_S = 15.0


def open_node(tmp: Path) -> Node:
    # any member may ask for info; the node's own discovery stays quiet (no bootstrap)
    return make_node(
        tmp,
        "n",
        "none",
        control={"allow_any_client": True},
        swarm={"key_file": str(swarm_key_file(tmp)), "handshake_timeout_s": HANDSHAKE_S},
    )


def peer_host(tmp: Path) -> P2PHost:
    """A member of the node's swarm with a key of its own."""
    return P2PHost(
        create_new_key_pair(),
        swarm_key=swarm_key(tmp),
        handshake_timeout_s=HANDSHAKE_S,
        dial_timeout_s=HANDSHAKE_S,
    )


async def test_more_sequential_connections_than_libp2p_inbound_cap_are_all_accepted(
    tmp_path: Path,
) -> None:
    node = open_node(tmp_path)
    # a few clients take turns, so that one's disconnect (libp2p spends ~0.2 s closing a
    # connection) overlaps the next one's connection; each connection is a new one
    clients = [peer_host(tmp_path) for _ in range(4)]
    total = LIBP2P_INBOUND_CAP + 70
    answered = 0
    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        async with running(clients), trio.open_nursery() as closing:
            for i in range(total):
                client = clients[i % len(clients)]
                # the previous connection of this client is gone on both sides
                await wait_until(
                    lambda c=client: (
                        not c.connected_peers()  # type: ignore[misc]
                        and c.peer_id not in node.host.connected_peers()
                    ),
                    timeout_s=5,
                    what="the client's previous connection to close",
                )
                with trio.fail_after(10):
                    await info_over_new_connection(client, node)
                answered += 1
                closing.start_soon(client.disconnect, node.peer_id)
        nursery.cancel_scope.cancel()
    assert answered == total


async def test_churn_of_200_peers_leaves_the_node_accepting_and_answering(
    tmp_path: Path,
) -> None:
    """200 peers, each its own host and key, connect, ask, and leave, in 2 cycles (400
    connections, well past the 250 slots): every one is accepted and answered."""
    node = open_node(tmp_path)
    peers = [peer_host(tmp_path) for _ in range(200)]
    answered = 0

    async def visit(peer: P2PHost, limit: trio.CapacityLimiter) -> None:
        nonlocal answered
        async with limit:
            with trio.fail_after(30):
                await info_over_new_connection(peer, node)
            answered += 1
        # left outside the limit: libp2p spends a few tenths of a second closing
        with trio.fail_after(30):
            await peer.disconnect(node.peer_id)

    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        async with running(peers):
            for cycle in range(2):
                limit = trio.CapacityLimiter(10)  # peers arriving at once
                async with trio.open_nursery() as visits:
                    for peer in peers:
                        visits.start_soon(visit, peer, limit)
                assert answered == 200 * (cycle + 1)
                await wait_until(
                    lambda: not node.host.connected_peers(),
                    timeout_s=10,
                    what="every peer of the cycle to be gone",
                )
            # and the node still answers a newcomer at once
            late = peer_host(tmp_path)
            async with late.run(["/ip4/127.0.0.1/tcp/0"]):
                with trio.fail_after(5):
                    await info_over_new_connection(late, node)
        nursery.cancel_scope.cancel()
