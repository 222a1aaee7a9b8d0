"""Real nodes (libp2p + journal + Ray) in one trio run, for integration tests; and a
separately started Ray cluster (``ray start --head`` on loopback) for cluster-mode tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import trio
from libp2p.crypto.keys import KeyPair

from node.config import NodeConfig
from node.daemon import Node
from node.home import Home
from node.p2p import P2PHost
from node.swarmkey import SwarmKey

FAST = {
    "discovery": {"refresh_interval_s": 0.2, "card_ttl_s": 10},
    "handoff": {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 2.0},
    "network": {"dial_timeout_s": 3, "request_timeout_s": 5, "shutdown_timeout_s": 2},
}


def swarm_key_file(tmp: Path) -> Path:
    """The key of the test swarm of ``tmp``, created on first use: the nodes that
    :func:`make_node` makes in ``tmp`` are its members."""
    path = tmp / "swarm.key"
    if not path.exists():
        SwarmKey.generate().write_new(path)
    return path


def swarm_key(tmp: Path) -> SwarmKey:
    return SwarmKey.load(swarm_key_file(tmp))


def member_host(tmp: Path, key_pair: KeyPair | None = None) -> P2PHost:
    """A bare libp2p host in the test swarm of ``tmp`` (a member, e.g. a rogue one)."""
    if key_pair is None:
        from libp2p.crypto.ed25519 import create_new_key_pair

        key_pair = create_new_key_pair()
    return P2PHost(key_pair, swarm_key=swarm_key(tmp))


def make_node(
    tmp: Path,
    name: str,
    tools: str,
    bootstrap: list[str] | None = None,
    *,
    cpus: int = 2,  # the session's Ray has 2 CPUs (tests/conftest.py)
    **overrides: Any,
) -> Node:
    """A node in the test swarm of ``tmp`` (``swarm={...}`` replaces that membership)."""
    home = Home(tmp / name)
    home.init_identity()
    raw: dict[str, Any] = {k: dict(v) for k, v in FAST.items()}
    raw["tools"] = tools
    raw["network"]["bootstrap"] = bootstrap or []
    raw["swarm"] = {"key_file": str(swarm_key_file(tmp))}
    for section, values in overrides.items():
        if section == "swarm":
            raw["swarm"] = dict(values)
        else:
            raw.setdefault(section, {}).update(values)
    return Node(NodeConfig.model_validate(raw), home, cpus=cpus)


async def launch(nursery: trio.Nursery, node: Node) -> trio.CancelScope:
    """Start ``node`` and return a scope that stops it (like killing it) when cancelled."""
    scope = trio.CancelScope()

    async def _run(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await node.run(task_status=task_status)

    await nursery.start(_run)
    return scope


async def wait_until(predicate: Any, timeout_s: float = 10.0, what: str = "condition") -> None:
    with trio.move_on_after(timeout_s):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


async def launch_delegator(
    nursery: trio.Nursery, tmp: Path, a: Node
) -> tuple[Node, trio.CancelScope]:
    """Start ``a``, then ``c`` (no tools, bootstrapped to ``a``) and wait until ``c`` has
    ``a``'s card: whatever ``c`` runs is delegated to ``a``. Returns ``c`` and the scope
    that stops it."""
    await launch(nursery, a)
    c = make_node(tmp, "c", "none", bootstrap=a.host.addrs())
    c_scope = await launch(nursery, c)
    await wait_until(lambda: c.registry.has_fresh_card(a.peer_id), what="c learning a")
    return c, c_scope


async def launch_demo_swarm(nursery: trio.Nursery, tmp: Path) -> tuple[Node, Node, Node]:
    """The demo's shape: ``a`` (text tools), then ``b`` (math) and ``c`` (no tools), both
    bootstrapped to ``a`` only."""
    a = make_node(tmp, "a", "text")
    await launch(nursery, a)
    b = make_node(tmp, "b", "math", bootstrap=a.host.addrs())
    await launch(nursery, b)
    c = make_node(tmp, "c", "none", bootstrap=a.host.addrs())
    await launch(nursery, c)
    return a, b, c


# -- a separately started Ray cluster --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class RayHead:
    address: str  # the GCS address, 127.0.0.1:PORT
    temp_dir: Path  # the head's own Ray temp dir (sessions, logs, sockets)
    pgid: int  # the head's daemons' process group
    env: dict[str, str]  # the environment for drivers that connect to it

    def processes(self) -> list[psutil.Process]:
        """The live processes of this cluster: its process group and their descendants
        (Ray's workers are the raylet's children, each in a session of its own)."""
        group = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getpgid(proc.pid) == self.pgid:
                    group.append(proc)
        found = {p.pid: p for p in group}
        for proc in group:
            with contextlib.suppress(psutil.Error):
                found.update((c.pid, c) for c in proc.children(recursive=True))
        return [p for p in found.values() if _running(p)]

    def jobs(self, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """The cluster's job table (a dict per driver: ``JobID``, ``DriverPid``, ``IsDead``,
        …), read by a throwaway driver subprocess (whose own job is listed too)."""
        code = (
            "import json, ray\n"
            "from ray._private import state\n"
            f"ray.init(address={self.address!r}, log_to_driver=False, logging_level='ERROR')\n"
            "print(json.dumps(state.jobs()))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if out.returncode != 0:
            raise RuntimeError(f"cannot read the job table:\n{out.stderr[-3000:]}")
        jobs: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
        return jobs


@contextlib.contextmanager
def ray_head(
    env: Mapping[str, str] | None = None, *, num_cpus: int = 1, timeout_s: float = 60.0
) -> Iterator[RayHead]:
    """``ray start --head`` on 127.0.0.1 with its own temp dir, free ports and its own
    process group, without dashboard UI or auth (a loopback-only throwaway cluster). On
    exit its processes are killed (its group and their descendants, nothing else) and the
    temp dir removed; raises if any of them still runs 10 s later."""
    temp_dir = Path(tempfile.mkdtemp(prefix="hmray", dir="/tmp"))  # short: socket paths
    head_env = dict(os.environ if env is None else env)
    head_env.update(
        RAY_AUTH_MODE="disabled",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_USAGE_STATS_ENABLED="0",
    )
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--port=0",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-port={free_port()}",  # its minimal dashboard runs anyway
            f"--temp-dir={temp_dir}",
        ],
        env=head_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # the head's daemons stay in this process group
    )
    head = RayHead("", temp_dir, proc.pid, head_env)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start --head failed:\n{out.decode(errors='replace')[-3000:]}")
        address = (temp_dir / "ray_current_cluster").read_text().strip()
        if not address.startswith("127.0.0.1:"):
            raise RuntimeError(f"the head is not on loopback: {address}")
        head = RayHead(address, temp_dir, proc.pid, head_env)
        yield head
    finally:
        tree = head.processes()  # before the kill: a worker's parent dies with the group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for member in tree:  # workers are in groups of their own
            with contextlib.suppress(psutil.Error):
                member.kill()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        _, left = psutil.wait_procs(tree, timeout=10)
        left += [p for p in head.processes() if p not in left]
        shutil.rmtree(temp_dir, ignore_errors=True)
        if left and sys.exc_info()[0] is None:  # never hide the exception that got here
            raise RuntimeError(f"the Ray head left processes running: {left}")


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
