"""py-libp2p's stream writes and reads without a checkpoint per free lock
(node/p2p/lean_locks.py): under contention — many streams of one connection, writers on
both sides, messages larger than the send window — every byte still arrives, in order."""

from __future__ import annotations

import random

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from node.p2p import P2PStream
from node.p2p.host import P2PHost
from node.p2p.lean_locks import use_lean_locks

PROTO = "/hivemesh-test/echo/1.0.0"


async def test_concurrent_streams_of_mixed_sizes_arrive_whole_and_in_order() -> None:
    assert use_lean_locks()  # installed by every host (and idempotent)
    a, b = P2PHost(create_new_key_pair()), P2PHost(create_new_key_pair())

    async def echo(stream: P2PStream) -> None:
        while data := await stream.read(65536):
            await stream.write(data)
        await stream.close()

    b.set_handler(PROTO, echo)
    rng = random.Random(7)
    sizes = [[rng.choice([1, 100, 5000, 70_000, 300_000]) for _ in range(12)] for _ in range(8)]
    got: dict[int, bytes] = {}

    async with a.run(["/ip4/127.0.0.1/tcp/0"]), b.run(["/ip4/127.0.0.1/tcp/0"]):
        await a.connect(b.peer_id, b.addrs())

        async def one(i: int) -> None:
            stream = await a.open_stream(b.peer_id, PROTO)
            sent = b"".join(bytes([i + j]) * n for j, n in enumerate(sizes[i]))
            back = bytearray()

            async def reader() -> None:
                while len(back) < len(sent):
                    chunk = await stream.read(65536)
                    assert chunk, "stream ended early"
                    back.extend(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for j, n in enumerate(sizes[i]):
                    await stream.write(bytes([i + j]) * n)
            await stream.close()
            got[i] = bytes(back)
            assert got[i] == sent

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(one, i)
    assert sorted(got) == list(range(8))
