"""A private swarm on real hosts (127.0.0.1, port 0): members connect and speak every
hivemesh protocol; a stranger without the swarm key, or with another key, cannot open any
of them, in either direction, and both sides give up at once, each saying why.

The nodes here wait up to 30 s for a handshake (``handshake_timeout_s``) while every wait in
the tests is bounded by 10 s: a refusal that arrives proves it came from recognising the
stranger, not from a timeout.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from node.client import request
from node.errors import ConfigError, NodeUnreachableError, NotInSwarmError
from node.handoff import delegate
from node.home import Home
from node.localswarm import cli_command
from node.p2p import P2PHost
from node.p2p.pnet import KEYED_PEER, NO_KEY, OTHER_KEY, silent
from node.swarmkey import SwarmKey
from protocols import control, discovery, handoff
from tests.integration.harness import launch, make_node, swarm_key, swarm_key_file, wait_until

pytestmark = pytest.mark.usefixtures("ray_cluster")


def create_peer_id() -> str:
    from libp2p.peer.id import ID

    return str(ID.from_pubkey(create_new_key_pair().public_key))


PATIENT = {"handshake_timeout_s": 30}
PROTOCOLS = [discovery.PROTOCOL_ID, handoff.PROTOCOL_ID, control.PROTOCOL_ID]


@pytest.fixture
def refusals(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="node.p2p.pnet"):
        yield caplog


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "node.p2p.pnet"]


def member_config(tmp: Path) -> dict[str, object]:
    """Membership of the test swarm of ``tmp``, waiting long for handshakes."""
    return {"key_file": str(swarm_key_file(tmp)), **PATIENT}


async def test_members_speak_discovery_handoff_and_control(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a", "math", swarm=member_config(tmp_path))
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        c = make_node(tmp_path, "c", "none", bootstrap=a.host.addrs())
        await launch(nursery, c)
        # discovery: c learnt a's card through its bootstrap dial
        await wait_until(lambda: c.registry.has_fresh_card(a.peer_id), what="c learning a")
        # handoff: c hands a step to a
        offer = handoff.Offer(
            handoff_id="pnet-1",
            workflow_id="w",
            step="s",
            tool="math.add",
            args={"a": 40, "b": 2},
            deadline_ms=20_000,
        )
        outcome = await delegate(
            c.host, a.peer_id, offer, network=c.config.network, config=c.config.handoff
        )
        assert outcome.outputs == {"result": 42}
        # control: a client holding the key
        owner = Home(tmp_path / "a").load_client_key()
        info = await request(
            owner, a.host.addrs()[0], control.InfoRequest(), swarm_key=swarm_key(tmp_path)
        )
        assert info.peer_id == a.peer_id
        assert a.swarm.key == c.swarm.key == swarm_key(tmp_path)
        nursery.cancel_scope.cancel()


async def test_a_host_without_the_key_cannot_open_any_protocol(
    tmp_path: Path, refusals: pytest.LogCaptureFixture
) -> None:
    """py-libp2p's own host (Noise, yamux, no private network) plays the stranger."""
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
    from libp2p.security.noise.transport import Transport as Noise
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux

    a = make_node(tmp_path, "a", "math", swarm=member_config(tmp_path))
    key_pair = create_new_key_pair()
    stranger = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_ID: Noise(key_pair, noise_privkey=create_x25519_key_pair().private_key)},
        muxer_opt={TProtocol(YAMUX_ID): Yamux},
    )
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        info = info_from_p2p_addr(multiaddr.Multiaddr(a.host.addrs()[0]))
        async with stranger.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            with trio.fail_after(10):
                with pytest.raises(Exception):  # noqa: B017 - libp2p's own error types
                    await stranger.connect(info)
                for protocol in PROTOCOLS:
                    with pytest.raises(Exception):  # noqa: B017
                        await stranger.new_stream(info.peer_id, [TProtocol(protocol)])
            assert not stranger.get_connected_peers()
            assert str(stranger.get_id()) not in a.host.connected_peers()
        lines = refusal_lines(refusals)
        assert lines, "the node logged no refusal"
        assert lines[0].startswith("refused connection from 127.0.0.1:")
        assert lines[0].endswith(
            "it did not complete the private-network handshake "
            f"(not a member of this swarm: {NO_KEY})"
        )
        nursery.cancel_scope.cancel()


async def test_another_key_is_refused_in_both_directions(
    tmp_path: Path, refusals: pytest.LogCaptureFixture
) -> None:
    a = make_node(tmp_path, "a", "math", swarm=member_config(tmp_path))
    stranger = P2PHost(create_new_key_pair(), swarm_key=SwarmKey.generate(), handshake_timeout_s=30)
    reached: list[str] = []

    async def record(stream: object) -> None:
        reached.append("stranger served a stream")

    for protocol in PROTOCOLS:
        stranger.set_handler(protocol, record)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        async with stranger.run(["/ip4/127.0.0.1/tcp/0"]):
            with trio.fail_after(10):
                # the stranger dials the node
                with pytest.raises(NotInSwarmError) as info:
                    await stranger.connect_addr(a.host.addrs()[0])
                assert info.value.reason == OTHER_KEY
                assert str(info.value) == (
                    f"peer {a.peer_id} is not a member of this swarm: it did not complete "
                    f"the private-network handshake ({OTHER_KEY})"
                )
                for protocol in PROTOCOLS:
                    with pytest.raises(NodeUnreachableError):
                        await stranger.open_stream(a.peer_id, protocol)
                # the node dials the stranger
                with pytest.raises(NotInSwarmError):
                    await a.host.connect(stranger.peer_id, stranger.addrs())
                # nor does the node's discovery reach it
                assert await a.discovery.bootstrap(stranger.addrs()) == []
            assert not stranger.connected_peers() and stranger.peer_id not in (
                a.host.connected_peers()
            )
        assert reached == []
        assert not a.registry.has_fresh_card(stranger.peer_id)
        lines = refusal_lines(refusals)
        expected = f"(not a member of this swarm: {OTHER_KEY})"
        # the node refused the stranger's dial, the stranger refused the node's
        assert len([line for line in lines if line.endswith(expected)]) >= 2
        nursery.cancel_scope.cancel()


async def test_an_open_node_and_a_private_one_do_not_mix(
    tmp_path: Path, refusals: pytest.LogCaptureFixture
) -> None:
    private = make_node(tmp_path, "a", "math", swarm=member_config(tmp_path))
    opened = make_node(tmp_path, "o", "none", swarm={"open": True, **PATIENT})
    async with trio.open_nursery() as nursery:
        with refusals.at_level(logging.INFO, logger="hivemesh.node"):
            await launch(nursery, private)
            await launch(nursery, opened)
        starts = [r for r in refusals.records if r.name == "hivemesh.node"]
        assert [r.levelname for r in starts if "OPEN swarm" in r.getMessage()] == ["WARNING"]
        assert any(r.getMessage() == f"swarm: {private.swarm.describe()}" for r in starts)
        with trio.fail_after(10):
            with pytest.raises(NotInSwarmError) as info:
                await opened.host.connect(private.peer_id, private.host.addrs())
            assert info.value.reason == KEYED_PEER
            with pytest.raises(NotInSwarmError) as info:
                await private.host.connect(opened.peer_id, opened.host.addrs())
            assert info.value.reason == NO_KEY
        lines = refusal_lines(refusals)
        assert any(line.endswith(f"(not a member of this swarm: {NO_KEY})") for line in lines)
        assert any(line.endswith(f"(not a member of this swarm: {KEYED_PEER})") for line in lines)
        nursery.cancel_scope.cancel()


async def test_a_silent_connection_is_closed_after_the_handshake_timeout(
    tmp_path: Path, refusals: pytest.LogCaptureFixture
) -> None:
    a = make_node(
        tmp_path,
        "a",
        "none",
        swarm={"key_file": str(swarm_key_file(tmp_path)), "handshake_timeout_s": 0.5},
    )
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        _, _, host, _, port = a.host.transport_addrs()[0].split("/")  # /ip4/H/tcp/P
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock, trio.fail_after(10):
            await sock.connect((host, int(port)))
            received = b""
            while True:  # the node's nonce, then EOF when it gives up on us
                chunk = await sock.recv(100)
                if not chunk:
                    break
                received += chunk
        assert len(received) == 24
        await wait_until(lambda: bool(refusal_lines(refusals)), what="the refusal log line")
        assert refusal_lines(refusals)[0].endswith(f"(not a member of this swarm: {silent(0.5)})")
        nursery.cancel_scope.cancel()


async def test_quic_is_refused_under_a_swarm_key() -> None:
    """(The config refuses it too: tests/unit/test_membership.py.)"""
    host = P2PHost(create_new_key_pair(), swarm_key=SwarmKey.generate())
    with pytest.raises(ConfigError, match=r"cannot listen on .*quic-v1 in a private swarm"):
        async with host.run(["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"]):
            pass
    with pytest.raises(NodeUnreachableError, match="QUIC is not used in a private swarm"):
        await host.connect(str(create_peer_id()), ["/ip4/127.0.0.1/udp/1/quic-v1"])


async def run_cli(*args: str) -> tuple[int, str, str]:
    done = await trio.run_process(
        [*cli_command(), *args], capture_stdout=True, capture_stderr=True, check=False
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_the_cli_says_in_one_line_that_a_node_is_in_another_swarm(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a", "math", swarm=member_config(tmp_path))
    home = str(tmp_path / "a")  # the node's own home: its client key is authorised
    other = tmp_path / "other.key"
    SwarmKey.generate().write_new(other)
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        addr = a.host.addrs()[0]
        with trio.fail_after(60):
            code, out, err = await run_cli(
                "node", "info", "--home", home, "--node", addr, "--swarm-key", str(other)
            )
            assert code == 1 and out == ""
            assert err.count("\n") == 1, err
            assert err.startswith(f"error: the node at {addr} is in another swarm (")
            assert f"this client used the swarm key {other}" in err
            assert err.rstrip().endswith("pass --swarm-key FILE with the key of the node's swarm")

            bare = tmp_path / "bare"  # a home without any swarm key: an open client
            code, out, err = await run_cli("node", "info", "--home", str(bare), "--node", addr)
            assert code == 1 and err == (
                f"error: the node at {addr} is in a private swarm and this client has no "
                "swarm key: pass --swarm-key FILE with the swarm.key of the node's swarm\n"
            )

            key_file = str(tmp_path / "swarm.key")
            code, out, err = await run_cli(
                "node", "info", "--home", home, "--node", addr, "--swarm-key", key_file, "--json"
            )
            assert (code, err) == (0, ""), err
            assert a.peer_id in out
        nursery.cancel_scope.cancel()
