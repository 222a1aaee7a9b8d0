"""Start and stop a swarm of real ``hivemesh node start`` processes on loopback.

Used by ``scripts/demo`` and the end-to-end tests. The nodes form one private swarm (one
``swarm.key`` in the root folder, given to each with ``--swarm-key``). Every process it
starts is stopped by :meth:`LocalSwarm.stop_all` (also called on context exit, whatever the
exit reason): SIGTERM first, SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil

from node.swarmkey import SwarmKey


def cli_command() -> list[str]:
    """How to run the ``hivemesh`` CLI with the current interpreter."""
    script = Path(sys.executable).parent / "hivemesh"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "node.cli"]


@dataclass
class NodeProcess:
    name: str
    home: Path
    tools: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def peer_id(self) -> str:
        return str(self.info["peer_id"])

    @property
    def addr(self) -> str:
        return str(self.info["addrs"][0])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Signal the node and wait for it; SIGKILL if it outlives ``timeout_s``.

        SIGKILL goes to the node's whole process group, so its Ray processes die with it
        (as they would with the machine)."""
        if sig == signal.SIGKILL:
            self.kill_group()
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return int(self.proc.returncode)

    def kill_group(self) -> None:
        """SIGKILL the node's process group and every process descended from it: Ray
        starts its workers in process groups of their own, and a worker running a step
        would otherwise outlive its node (as it could not outlive its machine)."""
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            family = []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for child in family:
            with contextlib.suppress(psutil.Error):
                child.kill()


class LocalSwarm:
    def __init__(
        self,
        root: Path,
        *,
        num_cpus: int = 1,
        env: dict[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.root = root
        self.num_cpus = num_cpus
        self.env = {**os.environ, **(env or {})}
        self.extra_args = list(extra_args)
        # one private swarm: every node started here runs with this key
        self.swarm_key_file = root / "swarm.key"
        self.nodes: list[NodeProcess] = []
        self._logs: list[IO[bytes]] = []

    def __enter__(self) -> LocalSwarm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self, name: str, tools: str, bootstrap: Sequence[str] = (), home: Path | None = None
    ) -> NodeProcess:
        home = home or self.root / name
        home.mkdir(parents=True, exist_ok=True)
        if not self.swarm_key_file.exists():
            SwarmKey.generate().write_new(self.swarm_key_file)
        cmd = [
            *cli_command(),
            "node",
            "start",
            "--home",
            str(home),
            "--tools",
            tools,
            "--num-cpus",
            str(self.num_cpus),
            "--swarm-key",
            str(self.swarm_key_file),
            *self.extra_args,
        ]
        for addr in bootstrap:
            cmd += ["--bootstrap", addr]
        log_path = self.root / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed in stop_all
        self._logs.append(log)
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        node = NodeProcess(name, home, tools, proc, log_path)
        self.nodes.append(node)
        return node

    def wait_ready(self, node: NodeProcess, timeout_s: float = 120.0) -> NodeProcess:
        """Wait until the node recorded itself in its home folder."""
        deadline = time.monotonic() + timeout_s
        runtime = node.home / "node.json"
        while time.monotonic() < deadline:
            if not node.alive():
                raise RuntimeError(
                    f"node {node.name} exited with {node.proc.returncode} before it was ready:"
                    f"\n{node.log_tail()}"
                )
            try:
                info = json.loads(runtime.read_text())
            except (OSError, ValueError):
                info = None
            if info and info.get("pid") == node.proc.pid:
                node.info = info
                return node
            time.sleep(0.1)
        raise TimeoutError(f"node {node.name} not ready after {timeout_s}s:\n{node.log_tail()}")

    def stop_all(self, timeout_s: float = 20.0) -> None:
        for node in self.nodes:
            if node.alive():
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.kill_group()
                node.proc.wait(10)
            # whatever the node left behind in its process group (Ray helpers) goes too
            node.kill_group()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def cli(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a ``hivemesh`` command; returns the completed process (never raises on exit)."""
        return subprocess.run(
            [*cli_command(), *args], capture_output=True, text=True, timeout=timeout_s, env=self.env
        )
