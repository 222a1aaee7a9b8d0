"""End to end: ``hivemesh node start`` refuses, in one line and before Ray starts, a home a
node runs from, a port in use and a home it cannot write; it finds a stale ``node.json`` by
the home's lock (not by its pid) and removes it.

Only the first test starts a node (and a Ray); every other start here fails before Ray,
which each test proves: the refused process runs with ``RAY_TMPDIR`` pointing at a folder
that Ray would have created."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.home import Home
from node.home_lock import lock_holder
from node.localswarm import LocalSwarm, cli_command
from node.p2p import ListenSockets

pytestmark = pytest.mark.e2e


class Cli:
    """Runs ``hivemesh`` with ``RAY_TMPDIR`` set to :attr:`ray_dir`, each run bounded."""

    def __init__(self, tmp: Path) -> None:
        self.ray_dir = tmp / "ray-would-start-here"
        self.env = {**os.environ, "RAY_TMPDIR": str(self.ray_dir)}

    def __call__(
        self, *args: str, prefix: tuple[str, ...] = (), timeout_s: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.Popen(
            [*prefix, *cli_command(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # with whatever Ray it started
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"hivemesh {' '.join(args)} still ran after {timeout_s}s:\n{err[-2000:]}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def refused(self, out: subprocess.CompletedProcess[str], line: str) -> None:
        """``out`` failed with exit 1 and ``line`` as its last line, no traceback, no Ray."""
        assert out.returncode == 1, out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        assert out.stderr.strip().splitlines()[-1] == line, out.stderr
        assert not self.ray_dir.exists(), "Ray was started before the refusal"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def initialised(path: Path) -> Home:
    home = Home(path)
    home.init()
    return home


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port held by an ordinary listening socket, as another program would hold it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.timeout(240)  # one node start (a Ray start, 5-30 s under load); waits bounded
def test_a_running_nodes_home_and_port_are_refused_and_kill_9_frees_the_home(
    tmp_path: Path, cli: Cli
) -> None:
    with LocalSwarm(tmp_path / "swarm", num_cpus=1) as local:
        node = local.wait_ready(local.start("a", "none"))
        home, pid = node.home, node.proc.pid

        again = cli("node", "start", "--home", str(home), "--tools", "none")
        cli.refused(
            again,
            f"error: a node is already running from {home} (pid {pid} holds "
            f"{home}/node.lock): stop it first, or start this node with another --home",
        )
        assert len(again.stderr.strip().splitlines()) == 1

        addr = f"/ip4/127.0.0.1/tcp/{node.addr.split('/')[4]}"
        other = tmp_path / "b"
        taken = cli("node", "start", "--home", str(other), "--listen", addr)
        cli.refused(taken, f"error: cannot listen on {addr}: address already in use")
        assert lock_holder(other) is None and not (other / "node.json").exists()

        # the refused starts changed nothing: the node still answers from its home
        info = cli("node", "info", "--home", str(home), "--json")
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["peer_id"] == node.peer_id
        assert json.loads((home / "node.json").read_text())["pid"] == pid

        # kill -9 of the node alone (its Ray processes live on until the swarm's clean-up):
        # the OS releases the lock; node.json stays behind, stale, and the CLI knows it
        os.kill(pid, signal.SIGKILL)
        node.proc.wait(30)
        assert lock_holder(home) is None
        assert (home / "node.json").exists()
        with ListenSockets.bind([addr]):  # nor does its port outlive it
            pass
        gone = cli("node", "info", "--home", str(home))
        cli.refused(
            gone,
            f"error: no node running from {home} "
            f"(start one with 'hivemesh node start --home {home}', or pass --node)",
        )


def test_a_port_held_by_another_program_is_refused_before_ray(
    tmp_path: Path, cli: Cli, held_port: int
) -> None:
    home = initialised(tmp_path / "h")
    addr = f"/ip4/127.0.0.1/tcp/{held_port}"
    out = cli("node", "start", "--home", str(home.path), "--listen", addr, "--tools", "none")
    cli.refused(out, f"error: cannot listen on {addr}: address already in use")
    assert len(out.stderr.strip().splitlines()) == 1
    assert lock_holder(home.path) is None


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)
    return proc.pid


@pytest.mark.parametrize("who", ["dead pid", "pid of another live process"])
def test_a_stale_node_json_is_found_by_the_lock_and_removed(
    tmp_path: Path, cli: Cli, who: str
) -> None:
    home = initialised(tmp_path / "h")
    pid = _dead_pid() if who == "dead pid" else os.getpid()  # this test is not a node
    home.runtime_file.write_text(
        json.dumps({"pid": pid, "addrs": ["/ip4/127.0.0.1/tcp/9/p2p/12D3KooWGone"]})
    )
    info = cli("node", "info", "--home", str(home.path))
    cli.refused(
        info,
        f"error: no node running from {home.path} "
        f"(start one with 'hivemesh node start --home {home.path}', or pass --node)",
    )
    # a start goes past it (and is stopped, before Ray, by an unknown tool group)
    out = cli("node", "start", "--home", str(home.path), "--tools", "no-such-group")
    assert out.stderr.splitlines()[0] == (
        f"removed {home.runtime_file}: left by a node that is no longer running (pid {pid})"
    )
    cli.refused(
        out,
        "error: unknown tool group 'no-such-group'; available groups: math, text, util "
        "(or 'all' / 'none')",
    )
    assert not home.runtime_file.exists()


READ_ONLY_BIND = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """An initialised home that the node cannot write, and the prefix to run commands with.

    Permission bits (chmod 0500) for a normal user; root writes through those, so as root
    the home is a read-only bind mount in a mount namespace of the command's own."""
    home = initialised(tmp_path / "ro").path
    if os.geteuid() != 0:
        os.chmod(home, 0o500)
        yield home, ()
        os.chmod(home, 0o700)
        return
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("root, and no unshare to make a read-only home with")
    prefix = (unshare, "-m", "sh", "-c", READ_ONLY_BIND, "sh", str(home))
    probe = subprocess.run(
        [*prefix, "sh", "-c", '! touch "$0/.probe" 2>/dev/null', str(home)],
        capture_output=True,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.skip(f"root, and cannot make a read-only bind mount here: {probe.stderr!r}")
    yield home, prefix


def test_an_unwritable_home_is_refused_before_ray(
    cli: Cli, read_only: tuple[Path, tuple[str, ...]]
) -> None:
    home, prefix = read_only
    out = cli("node", "start", "--home", str(home), "--tools", "none", prefix=prefix)
    why = "permission denied" if os.geteuid() != 0 else "read-only file system"
    cli.refused(
        out,
        f"error: home {home} is not writable ({why}): a node keeps its journal there; "
        "fix its permissions or use another --home",
    )
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_folder_where_the_journal_belongs_is_refused_before_ray(tmp_path: Path, cli: Cli) -> None:
    home = initialised(tmp_path / "h")
    home.journal.mkdir()
    out = cli("node", "start", "--home", str(home.path), "--tools", "none")
    cli.refused(
        out,
        f"error: {home.journal} is a folder, not a journal file: move it away or use "
        "another --home",
    )
    assert lock_holder(home.path) is None
