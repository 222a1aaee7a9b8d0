"""Interop with js-libp2p: a js peer (libp2p 3.3, @libp2p/tcp, @chainsafe/libp2p-noise,
@chainsafe/libp2p-yamux, @libp2p/pnet; tests/interop/js/peer.mjs, written from
docs/protocols.md) holding the same swarm.key joins a hivemesh node's private swarm and speaks
every hivemesh protocol, in both directions of dialling; with another key it is refused.

The js packages are installed with ``npm ci`` into tests/interop/js/node_modules once per
package-lock.json (a stamp file remembers which). Skipped only when ``node`` or ``npm`` is
not installed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from node.errors import NotInSwarmError
from node.p2p.pnet import OTHER_KEY
from node.swarmkey import SwarmKey
from tests.integration.harness import launch, make_node, swarm_key_file

pytestmark = pytest.mark.usefixtures("ray_cluster")

JS = Path(__file__).resolve().parent / "js"
STAMP = JS / "node_modules" / ".hivemesh-package-lock.sha256"


@pytest.fixture(scope="session")
def js_peer() -> Path:
    """peer.mjs, with its packages installed (``npm ci``, skipped when already done for
    this package-lock.json)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("the js-libp2p interop test needs node and npm, which are not installed")
    digest = hashlib.sha256((JS / "package-lock.json").read_bytes()).hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != digest:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=JS,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {JS} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        STAMP.write_text(digest + "\n")
    return JS / "peer.mjs"


@pytest.fixture
def refusals(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="node.p2p.pnet"):
        yield caplog


def js_identity() -> tuple[str, str]:
    """A seed for the js peer's Ed25519 key, and the peer id it must have."""
    seed = os.urandom(32)
    return seed.hex(), str(ID.from_pubkey(create_new_key_pair(seed).public_key))


def events(stdout: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]


async def run_js(peer: Path, **options: str) -> tuple[int, list[dict[str, Any]], str]:
    with trio.fail_after(60):
        done = await trio.run_process(
            ["node", str(peer), json.dumps(options)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return done.returncode, events(done.stdout), done.stderr.decode(errors="replace")


def other_key(tmp: Path) -> Path:
    path = tmp / "other.key"
    SwarmKey.generate().write_new(path)
    return path


async def test_a_js_member_speaks_discovery_handoff_and_control(
    js_peer: Path, tmp_path: Path
) -> None:
    seed, js_id = js_identity()
    a = make_node(tmp_path, "a", "math", control={"allowed_clients": [js_id]})
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        code, seen, err = await run_js(
            js_peer,
            mode="dial",
            node=a.host.addrs()[0],
            swarmKey=str(swarm_key_file(tmp_path)),
            seed=seed,
        )
        assert code == 0, (seen, err)
        started, hello, handed, info = seen
        assert started["peer_id"] == js_id  # the same Ed25519 identity on both sides
        assert hello["step"] == "discovery" and hello["peer_id"] == a.peer_id
        assert "math.add" in hello["tools"]
        assert handed["step"] == "handoff" and handed["outputs"] == {"result": 42}
        assert handed["messages"][0] == "accept" and handed["messages"][-1] == "result"
        # the js peer checked the receipt (RFC 8785 hashes, Ed25519 from the peer id) and
        # acknowledged the result
        assert handed["receipt_verified"] is True
        assert info["step"] == "control" and info["peer_id"] == a.peer_id
        assert "math.add" in info["tools"]
        # and the node took the js peer's card, from the authenticated connection
        assert a.registry.has_fresh_card(js_id)
        nursery.cancel_scope.cancel()


async def test_a_js_client_watches_a_workflow_from_the_spec(js_peer: Path, tmp_path: Path) -> None:
    """docs/protocols.md §10.8 from js-libp2p: submit, then watch to the end, heartbeats
    included (the node sends one every 0.2 s here)."""
    seed, js_id = js_identity()
    a = make_node(tmp_path, "a", "util", control={"allowed_clients": [js_id], "heartbeat_s": 0.2})
    workflow = (
        "id: napping\nsteps:\n  - name: nap\n    tool: util.sleep\n"
        "    inputs: [{name: seconds, value: 1}]\n"
    )
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        code, seen, err = await run_js(
            js_peer,
            mode="watch",
            node=a.host.addrs()[0],
            swarmKey=str(swarm_key_file(tmp_path)),
            seed=seed,
            workflow=workflow,
            workflowId="napping-js",
        )
        assert code == 0, (seen, err)
        watched = seen[-1]
        assert watched["step"] == "watch" and watched["status"] == "SUCCESSFUL"
        assert watched["types"][0] == "watching" and "heartbeat" in watched["types"]
        events = watched["events"]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        kinds = [e["kind"] for e in events]
        assert kinds[-4:] == ["placed", "running", "finished", "workflow_finished"], kinds
        assert events[-2]["node"] == a.peer_id
        nursery.cancel_scope.cancel()


async def test_a_js_peer_with_another_key_is_refused(
    js_peer: Path, tmp_path: Path, refusals: pytest.LogCaptureFixture
) -> None:
    seed, js_id = js_identity()
    a = make_node(tmp_path, "a", "math", control={"allowed_clients": [js_id]})
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        code, seen, err = await run_js(
            js_peer,
            mode="refused",
            node=a.host.addrs()[0],
            swarmKey=str(other_key(tmp_path)),
            seed=seed,
        )
        assert code == 0, (seen, err)  # 0: the js side failed to connect and holds no connection
        assert seen[-1]["event"] == "refused"
        assert not a.registry.has_fresh_card(js_id)
        assert js_id not in a.host.connected_peers()
        lines = [r.getMessage() for r in refusals.records if r.name == "node.p2p.pnet"]
        assert any(line.endswith(f"(not a member of this swarm: {OTHER_KEY})") for line in lines)
        nursery.cancel_scope.cancel()


async def listen_js(peer: Path, **options: str) -> tuple[Any, Any, str]:
    """Start peer.mjs in listen mode; returns (process, stdout lines, its address)."""
    proc = await trio.lowlevel.open_process(
        ["node", str(peer), json.dumps({"mode": "listen", **options})],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    lines = trio_lines(proc.stdout)
    with trio.fail_after(60):
        started = json.loads(await lines.__anext__())
        assert json.loads(await lines.__anext__())["event"] == "listening"
    return proc, lines, started["addrs"][0]


async def trio_lines(stream: trio.abc.ReceiveStream) -> Any:
    buf = b""
    while True:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()


async def stop_js(proc: Any) -> int:
    assert proc.stdin is not None
    await proc.stdin.aclose()  # the listener exits when its stdin closes
    with trio.fail_after(30):
        return int(await proc.wait())


async def test_a_node_dials_a_js_member_and_is_refused_by_a_js_stranger(
    js_peer: Path, tmp_path: Path
) -> None:
    seed, js_id = js_identity()
    a = make_node(tmp_path, "a", "math")
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        # a js member listens; the node bootstraps to it and swaps cards
        proc, lines, js_addr = await listen_js(
            js_peer, swarmKey=str(swarm_key_file(tmp_path)), seed=seed
        )
        try:
            with trio.fail_after(30):
                assert await a.discovery.bootstrap([js_addr]) == [js_id]
                hello = json.loads(await lines.__anext__())
            assert hello == {"event": "hello_from", "peer_id": a.peer_id, "tools": hello["tools"]}
            assert "math.add" in hello["tools"]
            assert a.registry.has_fresh_card(js_id)
        finally:
            assert await stop_js(proc) == 0

        # a js peer of another swarm listens; the node cannot connect to it
        seed2, js_id2 = js_identity()
        proc, lines, js_addr = await listen_js(
            js_peer, swarmKey=str(other_key(tmp_path)), seed=seed2
        )
        try:
            with trio.fail_after(30), pytest.raises(NotInSwarmError):
                await a.host.connect(js_id2, [js_addr])
            assert js_id2 not in a.host.connected_peers()
        finally:
            assert await stop_js(proc) == 0
        nursery.cancel_scope.cancel()
