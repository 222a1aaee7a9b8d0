"""Floods against a node, from libp2p hosts with keys of their own, members of its swarm:
what tests/e2e/test_floods.py and scripts/bench/floods.py throw at a real node process.

Run as a process of its own, so that the node's answers are timed by a process that does
not also carry the flood::

    python -m tests.floods KIND NODE_ADDR SWARM_KEY_FILE [--seconds S] [--scale X]

It prints one JSON line: what was attempted, accepted and refused. Kinds:

- ``quiet``: no flood (the reference for the node's figures);
- ``idle``: 4 keys, each opening 800 discovery streams and leaving them idle (negotiated,
  no frame), then one key opening 2,000 more;
- ``trickle``: 16 keys x 32 streams, each announcing a frame of 4 MiB (the largest allowed)
  and then trickling 64 KiB every 50 ms; a stream the node resets or refuses is opened
  again until the flood ends;
- ``connections``: 400 keys, each connecting and staying (no streams);
- ``garbage``: one key sending a garbage frame on a new stream, again and again (and trying
  to come back once it is banned).

``--scale`` multiplies the counts (the tests use less than the benchmark).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from node.errors import NodeError
from node.p2p import P2PHost, P2PStream, quiet_libp2p_logging, split_p2p_addr
from node.swarmkey import SwarmKey
from protocols import discovery
from protocols.errors import ProtocolError
from protocols.framing import encode_uvarint

KINDS = ("quiet", "idle", "trickle", "connections", "garbage")
MAX_FRAME = 4 * 1024 * 1024
HANDSHAKE_S = 15.0
CHUNK = 64 * 1024  # trickled every 50 ms: a whole frame in about 3 s


class Flood:
    def __init__(self, addr: str, swarm_key: SwarmKey, seconds: float) -> None:
        self.addr = addr
        self.peer_id, _ = split_p2p_addr(addr)
        self.swarm_key = swarm_key
        self.seconds = seconds
        self.counts: Counter[str] = Counter()
        self.deadline = 0.0

    def host(self) -> P2PHost:
        return P2PHost(
            create_new_key_pair(),
            swarm_key=self.swarm_key,
            handshake_timeout_s=HANDSHAKE_S,
            dial_timeout_s=HANDSHAKE_S,
            shutdown_timeout_s=5.0,
        )

    async def connect(self, host: P2PHost) -> bool:
        try:
            await host.connect_addr(self.addr)
        except NodeError:
            self.counts["connections refused"] += 1
            return False
        self.counts["connections accepted"] += 1
        return True

    async def open(self, host: P2PHost) -> P2PStream | None:
        try:
            stream = await host.open_stream(self.peer_id, discovery.PROTOCOL_ID)
            # the proposal at once: a stream opened lazily sends nothing (not even its yamux
            # SYN) before its first write, and the node would not know of it
            await stream.write(b"")
        except (NodeError, ProtocolError):
            self.counts["streams refused"] += 1
            return None
        self.counts["streams opened"] += 1
        return stream

    async def until_deadline(self) -> None:
        await trio.sleep_until(self.deadline)

    async def with_host(self, body: Any, *args: Any) -> None:
        host = self.host()
        async with host.run(["/ip4/127.0.0.1/tcp/0"]):
            if await self.connect(host):
                await body(host, *args)

    # -- kinds --------------------------------------------------------------------------------

    async def quiet(self, scale: float) -> None:
        await self.until_deadline()

    async def idle(self, scale: float) -> None:
        async def hold(host: P2PHost, n: int) -> None:
            streams: list[P2PStream] = []
            limit = trio.CapacityLimiter(64)

            async def one() -> None:
                async with limit:
                    stream = await self.open(host)
                if stream is not None:
                    streams.append(stream)

            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(one)
            await self.until_deadline()

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(self.with_host, hold, int(800 * scale))
            nursery.start_soon(self.with_host, hold, int(2000 * scale))

    async def trickle(self, scale: float) -> None:
        async def stream_trickle(host: P2PHost) -> None:
            # as an attacker would: a stream the node resets (or refuses) is opened again,
            # until the flood's end
            while trio.current_time() < self.deadline:
                stream = await self.open(host)
                if stream is None:
                    await trio.sleep(0.2)
                    continue
                try:
                    await stream.write(encode_uvarint(MAX_FRAME))
                    sent = 0
                    while trio.current_time() < self.deadline and sent < MAX_FRAME - CHUNK:
                        await stream.write(b" " * CHUNK)
                        sent += CHUNK
                        await trio.sleep(0.05)
                    # (a write to a stream the node reset does not fail on yamux)
                    self.counts["trickles written to the end"] += 1
                except ProtocolError:
                    self.counts["trickles reset by the node"] += 1
                    await trio.sleep(0.05)

        async def many(host: P2PHost, n: int) -> None:
            async with trio.open_nursery() as nursery:
                for _ in range(n):
                    nursery.start_soon(stream_trickle, host)

        async with trio.open_nursery() as nursery:
            for _ in range(max(1, int(16 * scale))):
                nursery.start_soon(self.with_host, many, 32)

    async def connections(self, scale: float) -> None:
        limit = trio.CapacityLimiter(32)

        async def stay(host: P2PHost) -> None:
            await self.until_deadline()

        async def one() -> None:
            async with limit:
                host = self.host()
            async with host.run(["/ip4/127.0.0.1/tcp/0"]):
                async with limit:
                    ok = await self.connect(host)
                if ok:
                    await stay(host)

        async with trio.open_nursery() as nursery:
            for _ in range(int(400 * scale)):
                nursery.start_soon(one)

    async def garbage(self, scale: float) -> None:
        host = self.host()
        async with host.run(["/ip4/127.0.0.1/tcp/0"]):
            while trio.current_time() < self.deadline:
                if not host.is_connected(self.peer_id) and not await self.connect(host):
                    # banned: refused at connection; try again a little later
                    await trio.sleep(0.5)
                    continue
                stream = await self.open(host)
                if stream is None:
                    await trio.sleep(0.05)
                    continue
                try:
                    await stream.write(b"\x05hello")  # five bytes, not JSON
                    answer = await stream.read(4096)
                    self.counts["garbage answered" if answer else "garbage reset"] += 1
                except ProtocolError:
                    self.counts["garbage reset"] += 1
                await stream.reset()

    async def run(self, kind: str, scale: float) -> dict[str, Any]:
        quiet_libp2p_logging()
        started = time.monotonic()
        self.deadline = trio.current_time() + self.seconds
        with trio.move_on_after(self.seconds + 30):
            await getattr(self, kind)(scale)
        return {"kind": kind, "seconds": round(time.monotonic() - started, 1), **self.counts}


# -- the other side: a node under a flood, watched from a process that does not flood ------

HONEST = """\
id: honest-{n}
steps:
  - name: hello
    tool: util.echo
    inputs: [{{name: value, value: "still here {n}"}}]
outputs: [{{name: said, value: '{{{{steps.hello.outputs.result}}}}'}}]
"""


@dataclass
class FloodRound:
    """What one flood did to a node: its RSS (bytes) before and at worst, ``info``
    latencies (seconds; a new connection each, as the CLI makes), ``info`` requests that
    failed, and the honest workflow's status."""

    kind: str
    baseline_rss: int = 0
    peak_rss: int = 0
    latencies: list[float] = field(default_factory=list)
    info_failures: list[str] = field(default_factory=list)
    workflow: str = "not run"
    flooder: dict[str, Any] = field(default_factory=dict)

    @property
    def worst_latency(self) -> float:
        return max(self.latencies, default=float("inf"))


def start_flooder(kind: str, addr: str, swarm_key_file: Path, seconds: float, scale: float) -> Any:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.floods",
            kind,
            addr,
            str(swarm_key_file),
            "--seconds",
            str(seconds),
            "--scale",
            str(scale),
        ],
        cwd=str(Path(__file__).resolve().parents[1]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def flood_round(
    kind: str,
    *,
    pid: int,
    addr: str,
    client_key: Any,
    swarm_key_file: Path,
    seconds: float,
    scale: float,
    probe_every_s: float = 0.25,
) -> FloodRound:
    """Flood the node (``pid``, at ``addr``) for ``seconds`` from a process of its own;
    meanwhile sample its RSS every 50 ms, ask ``info`` every ``probe_every_s`` over a new
    connection, and run one honest workflow (``util.echo``) through the control protocol."""
    from node.client import request
    from protocols import control

    proc = psutil.Process(pid)
    out = FloodRound(kind, baseline_rss=proc.memory_info().rss)
    out.peak_rss = out.baseline_rss
    swarm_key = SwarmKey.load(swarm_key_file)
    flooder = start_flooder(kind, addr, swarm_key_file, seconds, scale)
    done = trio.Event()

    async def sample() -> None:
        while not done.is_set():
            out.peak_rss = max(out.peak_rss, proc.memory_info().rss)
            await trio.sleep(0.05)

    async def ask(message: Any, timeout_s: float | None) -> Any:
        return await request(client_key, addr, message, swarm_key=swarm_key, timeout_s=timeout_s)

    async def probe() -> None:
        await trio.sleep(1.0)  # let the flood start
        while not done.is_set():
            started = time.monotonic()
            try:
                with trio.fail_after(5):
                    await ask(control.InfoRequest(), 5)
                out.latencies.append(time.monotonic() - started)
            except (Exception, trio.TooSlowError) as exc:
                out.info_failures.append(f"{type(exc).__name__}: {exc}"[:200])
            await trio.sleep(probe_every_s)

    async def honest() -> None:
        await trio.sleep(min(3.0, seconds / 2))
        n = f"{kind}-{time.monotonic_ns()}"
        try:
            with trio.fail_after(60):
                sub = await ask(control.SubmitRequest(workflow=HONEST.format(n=n)), 30)
                res = await ask(control.ResultRequest(workflow_id=sub.workflow_id, wait=True), None)
            said = (res.outputs or {}).get("said")
            out.workflow = res.status if said == f"still here {n}" else f"{res.status}: {said!r}"
        except (Exception, trio.TooSlowError) as exc:
            out.workflow = f"failed: {type(exc).__name__}: {exc}"[:300]

    async def wait_flooder() -> None:
        stdout, stderr = await trio.to_thread.run_sync(flooder.communicate)
        lines = stdout.strip().splitlines()
        try:
            out.flooder = json.loads(lines[-1]) if lines else {"error": stderr[-2000:]}
        except ValueError:
            out.flooder = {"error": (stdout + stderr)[-2000:]}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        nursery.start_soon(probe)
        nursery.start_soon(honest)
        await wait_flooder()
        done.set()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("addr")
    parser.add_argument("swarm_key", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    flood = Flood(args.addr, SwarmKey.load(args.swarm_key), args.seconds)
    result = trio.run(flood.run, args.kind, args.scale)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
