"""End to end: the CLI talks to its home's node (a real ``hivemesh node start``) on the
node's control socket, without importing libp2p; it takes libp2p when the socket is gone;
a node killed with -9 leaves a stale socket that the restarted node replaces."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from node.client import VIA_ENV
from node.localswarm import LocalSwarm

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ONE_STEP = (
    "id: one\nname: One step\nsteps:\n  - name: up\n    tool: text.upper\n"
    "    inputs: [{name: text, value: hello}]\n"
    "outputs: [{name: shouted, value: '{{steps.up.outputs.result}}'}]\n"
)


def cli(
    env: dict[str, str], *args: str, importtime: bool = False
) -> subprocess.CompletedProcess[str]:
    """``hivemesh ARGS`` (as ``python -m node.cli``, so that ``-X importtime`` can be given)."""
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "node.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )


def imported_libp2p(out: subprocess.CompletedProcess[str]) -> bool:
    return any(line.rstrip().endswith(" libp2p") for line in out.stderr.splitlines())


def test_the_cli_uses_the_socket_without_libp2p_and_libp2p_without_the_socket(
    tmp_path: Path,
) -> None:
    wf = tmp_path / "one.yaml"
    wf.write_text(ONE_STEP)
    with LocalSwarm(tmp_path, num_cpus=1) as local:
        node = local.wait_ready(local.start("a", "text"))
        home = node.home
        sock = home / "control.sock"
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
        at = ["--home", str(home)]
        socket_only = {**os.environ, VIA_ENV: "socket"}
        auto = {k: v for k, v in os.environ.items() if k != VIA_ENV}

        out = cli(socket_only, "submit", str(wf), *at, "--wait", "--json", importtime=True)
        assert out.returncode == 0, out.stderr[-3000:]
        assert not imported_libp2p(out)
        result = json.loads(out.stdout)
        assert (result["status"], result["outputs"]) == ("SUCCESSFUL", {"shouted": "HELLO"})
        wid = result["workflow_id"]

        live = cli(socket_only, "submit", str(wf), *at, "--id", "one-live", "--wait")
        assert live.returncode == 0, live.stderr
        lines = live.stdout.splitlines()
        assert lines[0].startswith("watching one-live (One step): "), lines
        assert lines[-2:] == ["workflow one-live SUCCESSFUL", '  shouted = "HELLO"'], lines

        status = cli(socket_only, "status", wid, *at, "--json", importtime=True)
        assert status.returncode == 0, status.stderr[-3000:]
        assert not imported_libp2p(status)
        assert json.loads(status.stdout)["steps"][0]["node"] == node.peer_id
        waited = cli(socket_only, "result", wid, *at, "--wait", "--json")
        assert json.loads(waited.stdout) == {"shouted": "HELLO"}, waited.stderr
        watched = cli(socket_only, "watch", "one-live", *at)
        assert watched.returncode == 0, watched.stderr
        assert watched.stdout.splitlines()[-1] == "workflow one-live SUCCESSFUL"

        # the socket gone (moved away; the node still listens on it): libp2p answers
        away = home / "control.sock.away"
        os.rename(sock, away)
        fallback = cli(auto, "status", wid, *at, "--json", importtime=True)
        assert fallback.returncode == 0, fallback.stderr[-3000:]
        assert imported_libp2p(fallback)
        assert json.loads(fallback.stdout)["status"] == "SUCCESSFUL"
        refused = cli(socket_only, "status", wid, *at)
        assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1
        assert "control socket" in refused.stderr
        os.rename(away, sock)

        # killed with -9: the socket file stays, nobody answers on it; libp2p says why
        node.stop(signal.SIGKILL)
        assert sock.exists()
        gone = cli(auto, "status", wid, *at)
        assert gone.returncode == 1 and "no node running from" in gone.stderr, gone.stderr

        again = local.wait_ready(local.start("a-again", "text", home=home))
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        back = cli(socket_only, "status", wid, *at, "--json")
        assert back.returncode == 0, back.stderr
        assert json.loads(back.stdout)["status"] == "SUCCESSFUL"
        assert again.stop(signal.SIGTERM) == 0
        assert not sock.exists()  # removed at stop
