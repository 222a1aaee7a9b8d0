"""What hostile workflow files cost: the parser alone, a real node, and a thread against a
worker process.

1. library: each file parsed by ``workflows.dsl.parse_workflow`` in a fresh process: the
   wall time and the peak memory the parse added (ru_maxrss), and the error it gave.
2. node: one real daemon started as the README says (``hivemesh node start``, its own Ray);
   each file sent in a control ``submit`` from one client connection while another task
   sends ``info`` every 20 ms: the submit's answer time, ``info`` latency meanwhile (median,
   max), and the peak RSS of the daemon and of its parse workers (sampled every 20 ms).
   The last two files are valid: their rows include creating and starting the workflow
   (the engine's work, on the node), not only parsing it.
3. thread vs process: a trio loop's lateness (a 5 ms sleep, and a TCP echo on loopback)
   while the slowest file the default bounds admit is parsed 3 times in a worker thread,
   then in node.parse_pool's worker process: why the node parses in processes.

    .venv/bin/python scripts/bench/hostile_parse.py [--only library,node,thread]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests import hostile_workflows as hostile  # noqa: E402  (the repo's own test data)

MiB = 1024 * 1024


def slowest_valid(keys: int = 49_000) -> bytes:
    """About the slowest file the default bounds let through: a 49,000-key mapping."""
    mapping = "{" + ",".join(f"k{i}: {i}" for i in range(keys)) + "}"
    return (
        "id: slow\nsteps:\n  - name: s\n    tool: util.echo\n    inputs:\n"
        f"      - name: value\n        value: {mapping}\n"
    ).encode()


def slowest_refused() -> bytes:
    """The same, refused only once parsed: a reference to an input it does not declare."""
    return slowest_valid() + b"      - name: other\n        value: '{{inputs.nope}}'\n"


FILES: dict[str, Callable[[], bytes]] = {
    **hostile.HOSTILE,
    "49,000 keys, refused at end": slowest_refused,
    "1,000 steps (valid)": lambda: hostile.many_steps(1000),
    "49,000-key value (valid)": slowest_valid,
}

# -- 1. the parser alone ---------------------------------------------------------------------

_CHILD = r"""
import json, resource, sys, time
from workflows.dsl import parse_workflow
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    parse_workflow(data, source="f.yaml").to_json()
    outcome = "parsed"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {exc}"
elapsed = time.perf_counter() - start
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"s": elapsed, "kib": grown, "outcome": outcome}))
"""


def library(tmp: Path) -> None:
    print("\n1. the parser alone (a fresh process per file)\n")
    print(f"{'file':28} {'bytes':>10} {'time':>9} {'peak +':>8}  outcome")
    for name, make in FILES.items():
        data = make()
        path = tmp / "f.yaml"
        path.write_bytes(data)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        if out.returncode != 0:
            print(f"{name:28} {len(data):>10} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(out.stdout)
        print(
            f"{name:28} {len(data):>10} {r['s'] * 1000:>7.1f}ms {r['kib'] / 1024:>6.1f}MB  "
            f"{r['outcome'][:90]}"
        )


# -- 2. a real node --------------------------------------------------------------------------


async def _node_round(client: Any, daemon: psutil.Process, name: str, data: bytes) -> str:
    from protocols import control
    from protocols.errors import PeerErrorResponse, ProtocolError

    latencies: list[float] = []
    peak = {"node": 0, "workers": 0}
    done = trio.Event()

    async def sample() -> None:
        while not done.is_set():
            try:
                peak["node"] = max(peak["node"], daemon.memory_info().rss)
                for child in daemon.children(recursive=False):
                    if "workflows.dsl.worker" in " ".join(child.cmdline()):
                        peak["workers"] = max(peak["workers"], child.memory_info().rss)
            except psutil.Error:
                pass
            await trio.sleep(0.02)

    async def infos() -> None:
        while not done.is_set():
            start = time.monotonic()
            await client(control.InfoRequest(), 30)
            latencies.append(time.monotonic() - start)
            await trio.sleep(0.02)

    outcome = ""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample)
        nursery.start_soon(infos)
        await trio.sleep(0.1)  # a few idle samples first
        start = time.monotonic()
        try:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:  # a JSON string carries text: the garbage as Latin-1
                text = data.decode("latin-1")
            if len(text) > 1024 * 1024:
                outcome = "not sent: over the control protocol's 1 MiB (the CLI refuses it)"
            else:
                reply = await client(control.SubmitRequest(workflow=text, source="f.yaml"), 60)
                outcome = f"submitted {reply.status}"
        except PeerErrorResponse as exc:
            outcome = f"{exc.code}: {exc.message}"
        except ProtocolError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        answered = time.monotonic() - start
        await trio.sleep(0.2)  # infos after the answer too
        done.set()
    lat = sorted(latencies)
    return (
        f"{name:28} {answered * 1000:>8.1f}ms {statistics.median(lat) * 1000:>7.1f}ms "
        f"{lat[-1] * 1000:>7.1f}ms {len(lat):>4} {peak['node'] / MiB:>7.0f}MB "
        f"{peak['workers'] / MiB:>6.0f}MB  {outcome[:80]}"
    )


def node(tmp: Path) -> None:
    from node.localswarm import LocalSwarm

    print("\n2. a real node (hivemesh node start; one client connection)\n")
    with LocalSwarm(tmp / "swarm", num_cpus=1) as local:
        proc = local.wait_ready(local.start("a", "text,util"))
        daemon = psutil.Process(proc.proc.pid)
        print(f"daemon pid {daemon.pid}, idle RSS {daemon.memory_info().rss / MiB:.0f} MB")
        print(
            f"\n{'file':28} {'answer':>10} {'info p50':>9} {'info max':>9} {'n':>4} "
            f"{'node RSS':>9} {'worker':>8}  answer"
        )
        trio.run(_node_rounds, proc, daemon)


async def _node_rounds(proc: Any, daemon: psutil.Process) -> None:
    from node.home import Home
    from node.p2p import P2PHost, quiet_libp2p_logging
    from node.swarmkey import SwarmKey
    from protocols import control
    from protocols.stream import MessageStream

    quiet_libp2p_logging()
    key = Home(proc.home).load_client_key()
    swarm_key = SwarmKey.load(proc.home.parent / "swarm.key")
    host = P2PHost(key, swarm_key=swarm_key)
    async with host.run(["/ip4/127.0.0.1/tcp/0"]):
        peer = await host.connect_addr(proc.addr)

        async def client(message: Any, timeout_s: float) -> Any:
            stream = await host.open_stream(peer, control.PROTOCOL_ID)
            ms = MessageStream(stream, control.RESPONSE_CODEC)
            try:
                await ms.send(message)
                return await ms.receive_within(timeout_s)
            finally:
                await ms.close()

        await client(control.InfoRequest(), 30)
        for name, make in FILES.items():
            print(await _node_round(client, daemon, name, make()), flush=True)


# -- 3. thread against process ---------------------------------------------------------------


async def _lateness(parse: Callable[[], Any], rounds: int = 3) -> str:
    late: list[float] = []
    rtts: list[float] = []
    done = trio.Event()

    async def sleeper() -> None:
        while not done.is_set():
            start = time.perf_counter()
            await trio.sleep(0.005)
            late.append(time.perf_counter() - start - 0.005)

    async def echo() -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def serve(stream: trio.SocketStream) -> None:
            async for data in stream:
                await stream.send_all(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, serve, listeners)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            while not done.is_set():
                start = time.perf_counter()
                await stream.send_all(b"x")
                await stream.receive_some(1)
                rtts.append(time.perf_counter() - start)
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sleeper)
        nursery.start_soon(echo)
        start = time.perf_counter()
        for _ in range(rounds):
            await parse()
        elapsed = time.perf_counter() - start
        done.set()

    def q(xs: list[float], p: float) -> float:
        return sorted(xs)[max(0, int(len(xs) * p) - 1)] * 1000

    return (
        f"{elapsed:>6.2f}s  {q(late, 0.5):>6.1f} {q(late, 0.99):>7.1f} {max(late) * 1000:>7.1f}ms"
        f"   {q(rtts, 0.5):>6.2f} {q(rtts, 0.99):>7.1f} {max(rtts) * 1000:>7.1f}ms"
    )


def thread_vs_process() -> None:
    from node.parse_pool import ParsePool
    from workflows.dsl import ParseLimits, parse_workflow

    data = slowest_valid()
    print("\n3. the trio loop while the 49,000-key file is parsed 3 times\n")
    print(
        f"{'where':10} {'total':>7}  {'5 ms sleep late p50/p99/max':>27}   "
        f"{'TCP echo p50/p99/max':>23}"
    )

    async def idle() -> None:
        await trio.sleep(1.5)

    async def in_thread() -> None:
        await trio.to_thread.run_sync(lambda: parse_workflow(data))

    async def run_pool() -> None:
        pool = ParsePool(ParseLimits(), workers=1)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.serve)
            await pool.parse(hostile.many_steps(1), "warm-up")

            async def in_process() -> None:
                await pool.parse(data, "slow.yaml")

            print(f"{'process':10} {await _lateness(in_process)}")
            nursery.cancel_scope.cancel()

    async def run_others() -> None:
        print(f"{'idle':10} {await _lateness(idle)}")
        print(f"{'thread':10} {await _lateness(in_thread)}")

    trio.run(run_others)
    trio.run(run_pool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", default="library,node,thread")
    args = parser.parse_args()
    parts = {p.strip() for p in args.only.split(",")}
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="hmhostile") as tmp:
        if "library" in parts:
            library(Path(tmp))
        if "thread" in parts:
            thread_vs_process()
        if "node" in parts:
            node(Path(tmp))


if __name__ == "__main__":
    main()
