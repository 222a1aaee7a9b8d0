"""The local control endpoint's pure parts (who may connect, the socket's path, the pending
bytes budget), the client's choice between the socket and libp2p, and that the client's
socket path imports no libp2p."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from node.client import VIA_ENV, local_socket, run
from node.control_socket import (
    MAX_SOCKET_PATH,
    PeerCred,
    PendingBudget,
    clear_stale,
    parse_peercred,
    peer_cred,
    refusal,
    socket_path,
)
from node.errors import NodeUnreachableError
from node.home import Home
from protocols import control

ROOT = Path(__file__).resolve().parents[2]


def test_only_the_nodes_own_uid_is_let_in() -> None:
    assert refusal(PeerCred(pid=10, uid=1000, gid=1000), own_uid=1000) is None
    why = refusal(PeerCred(pid=10, uid=1001, gid=1000), own_uid=1000)
    assert why is not None and "uid 1000" in why and "uid 1001" in why
    assert refusal(PeerCred(pid=10, uid=0, gid=0), own_uid=1000) is not None  # root too
    # no credentials (no SO_PEERCRED on the platform): the file mode was the check
    assert refusal(None, own_uid=1000) is None


def test_peercred_is_read_as_the_kernel_writes_it() -> None:
    raw = struct.pack("=iII", 4242, 1001, 1002)
    assert parse_peercred(raw) == PeerCred(pid=4242, uid=1001, gid=1002)


@pytest.mark.skipif(not hasattr(socket, "SO_PEERCRED"), reason="Linux only")
def test_peercred_of_a_real_unix_socket_is_this_process() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        assert peer_cred(a) == PeerCred(os.getpid(), os.getuid(), os.getgid())


def test_a_home_too_long_for_a_unix_socket_has_no_socket_path(tmp_path: Path) -> None:
    assert socket_path(tmp_path) == tmp_path / "control.sock"
    room = MAX_SOCKET_PATH - len(os.fsencode(tmp_path / "control.sock"))
    fits = tmp_path / ("x" * (room - 1))
    assert socket_path(fits) is not None
    assert len(os.fsencode(socket_path(fits) or "")) == MAX_SOCKET_PATH
    assert socket_path(tmp_path / ("x" * room)) is None


def test_pending_bytes_are_bounded_together_and_given_back() -> None:
    budget = PendingBudget(100)
    assert budget.charge(60) and budget.held == 60
    assert not budget.charge(41) and budget.held == 60  # refused: nothing taken
    assert budget.charge(40) and budget.held == 100
    assert budget.charge(-100) and budget.held == 0
    unbounded = PendingBudget(None)
    assert unbounded.charge(10**12)


def test_only_a_socket_nobody_accepts_on_is_cleared(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    assert clear_stale(path)  # nothing there
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert clear_stale(path) and not path.exists()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen(1)
        assert not clear_stale(path) and path.exists()  # a live node's: left alone
    path.unlink()
    path.write_text("mine")
    assert not clear_stale(path) and path.read_text() == "mine"


def _runtime(home: Home, **info: object) -> None:
    home.path.mkdir(exist_ok=True)
    home.write_runtime({"pid": 1, "peer_id": "12D3KooWPeer", "addrs": [], **info})


def test_the_socket_is_used_only_as_the_homes_node_recorded_it(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    sock = str(home.path / "control.sock")
    _runtime(home)
    assert local_socket(home) is None  # an older node: no socket recorded
    _runtime(home, control_socket=None, control_protocol=control.PROTOCOL_ID)
    assert local_socket(home) is None
    _runtime(home, control_socket=sock, control_protocol="/hivemesh/control/9.0.0")
    assert local_socket(home) is None  # another version: libp2p negotiates
    _runtime(home, control_socket=sock, control_protocol=control.PROTOCOL_ID)
    assert local_socket(home) == (home.path / "control.sock", "12D3KooWPeer")


def test_a_socket_nobody_answers_on_falls_back_to_libp2p(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = Home(tmp_path / "h")
    _runtime(
        home, control_socket=str(home.path / "control.sock"), control_protocol=control.PROTOCOL_ID
    )
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(home.path / "control.sock"))  # as a node killed with -9 leaves it
    stale.close()

    async def work(host: object, peer: str) -> str:
        raise AssertionError("nothing answers: no work is done")

    # libp2p's answer: the home's lock is free, so no node runs there
    with pytest.raises(NodeUnreachableError, match="no node running from"):
        run(home, None, work)
    monkeypatch.setenv(VIA_ENV, "socket")
    with pytest.raises(NodeUnreachableError, match=r"control socket .* does not answer"):
        run(home, None, work)
    monkeypatch.setenv(VIA_ENV, "carrier-pigeon")
    with pytest.raises(NodeUnreachableError, match="not one of auto, socket, libp2p"):
        run(home, None, work)


def test_the_clients_socket_path_imports_no_libp2p() -> None:
    code = (
        "import sys\n"
        "import node.cli, node.client, node.control_socket\n"
        "from node.client import LocalControl, ask, local_session, run, watch\n"
        "from node.watch_view import PlainView\n"
        "from protocols import control\n"
        "loaded = sorted(m for m in sys.modules if m == 'libp2p' or m.startswith('libp2p.'))\n"
        "print(json.dumps(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
