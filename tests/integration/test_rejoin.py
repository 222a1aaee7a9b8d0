"""A node keeps its place in the swarm: it comes back on its port, redials the peers it
remembers (with no bootstrap of its own), and no peer can make it remember an address
elsewhere or grow what it remembers. Real libp2p hosts and a real Ray in one trio run."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair

from node.addr_record import sign_addr_record
from node.daemon import Node
from node.errors import NodeUnreachableError
from node.home import Home, peer_id_of
from node.p2p import P2PHost
from protocols import discovery
from protocols.stream import MessageStream
from tests.integration.harness import launch, make_node, member_host, wait_until
from workflows.dsl import parse_workflow
from workflows.status import WorkflowStatus

pytestmark = pytest.mark.usefixtures("ray_cluster")

LISTEN = ["/ip4/127.0.0.1/tcp/0"]
ECHO = """
id: echo
steps:
  - name: e
    tool: util.echo
    inputs: [{name: value, value: 7}]
"""


def port_of(node: Node) -> int:
    (addr,) = node.host.transport_addrs()
    return int(addr.rsplit("/", 1)[1])


async def routed_to(a: Node, b: Node, wid: str) -> None:
    """A one-step util workflow submitted to ``a`` (no tools) runs on ``b``."""
    await a.workflows.submit(parse_workflow(ECHO), {}, wid)
    with trio.fail_after(30):
        view = await a.workflows.wait(wid)
    assert view.status is WorkflowStatus.SUCCESSFUL, view.error
    assert [s.node for s in view.steps] == [b.peer_id]


async def test_a_restarted_node_comes_back_on_its_port_and_is_routed_to_again(
    tmp_path: Path,
) -> None:
    a = make_node(tmp_path, "a", "none")
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        b = make_node(tmp_path, "b", "util", bootstrap=a.host.addrs())
        b_scope = await launch(nursery, b)
        port = port_of(b)
        # each remembers the other, at the address it verified, by the time b is ready
        (a_addr,) = a.host.addrs()
        mine = b.peer_store.get(a.peer_id)
        assert mine is not None and mine.addrs == (a_addr,) and mine.dialled
        theirs = a.peer_store.get(b.peer_id)
        assert theirs is not None and theirs.addrs == tuple(b.host.addrs())
        assert not theirs.dialled  # b dialled a: a only saw it connect from b's IP
        stored = json.loads(Home(tmp_path / "b").peers_file.read_text())
        assert [p["peer_id"] for p in stored["peers"]] == [a.peer_id]
        await routed_to(a, b, "echo-1")

        b_scope.cancel()
        await wait_until(lambda: not a.host.is_connected(b.peer_id), what="a losing b")
        await wait_until(lambda: not b.home.runtime_file.exists(), what="b stopped")
        again = make_node(tmp_path, "b", "util")  # no bootstrap
        assert again.config.network.bootstrap == []
        started = trio.current_time()
        await launch(nursery, again)
        assert port_of(again) == port
        await wait_until(lambda: a.host.is_connected(b.peer_id), what="b back in a's swarm")
        await routed_to(a, again, "echo-2")
        assert trio.current_time() - started < 10
        nursery.cancel_scope.cancel()


async def test_a_node_whose_port_was_taken_is_found_again_through_the_peers_it_remembers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = make_node(tmp_path, "a", "none")
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        b = make_node(tmp_path, "b", "util", bootstrap=a.host.addrs())
        b_scope = await launch(nursery, b)
        old_port = port_of(b)
        b_scope.cancel()
        await wait_until(lambda: not a.host.is_connected(b.peer_id), what="a losing b")
        await wait_until(lambda: not b.home.runtime_file.exists(), what="b stopped")
        with socket.socket() as squatter:
            # (SO_REUSEADDR: the old node's connections may linger in TIME_WAIT there)
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", old_port))
            squatter.listen()
            again = make_node(tmp_path, "b", "util")  # no bootstrap, and its port taken
            with caplog.at_level(logging.WARNING, logger="hivemesh.node"):
                await launch(nursery, again)
            assert port_of(again) != old_port
            notes = [r.getMessage() for r in caplog.records if r.name == "hivemesh.node"]
            assert f"listen port {old_port} (remembered for /ip4/127.0.0.1/tcp/0) is not free" in (
                notes[0] if notes else ""
            )
            # a cannot find it at the old port: b finds a, and a learns b's new address
            await wait_until(lambda: a.host.is_connected(b.peer_id), what="b dialling a")
            await routed_to(a, again, "echo-3")
            state = a.registry.get(b.peer_id)
            assert state is not None and state.addrs[0] == again.host.addrs()[0]
        nursery.cancel_scope.cancel()


async def hello_from(
    key: KeyPair, host: P2PHost, node: Node, addrs: list[str], peers: list[discovery.PeerRef]
) -> None:
    """``host`` (a member, identity ``key``) connects to ``node`` and says hello with a card
    whose signed record lists ``addrs`` (transport addresses of its choosing)."""
    record = sign_addr_record(key, addrs, 1)
    card = discovery.NodeCard(
        peer_id=host.peer_id,
        addrs=[f"{a}/p2p/{host.peer_id}" for a in addrs],
        version="0.2.0",
        tools=[],
        load=discovery.LoadInfo(running=0, capacity=1),
        ttl_s=600,
        addr_record=record.encoded,
    )
    await host.connect(node.peer_id, node.host.addrs())
    ms = MessageStream(await host.open_stream(node.peer_id, discovery.PROTOCOL_ID), discovery.CODEC)
    await ms.send(discovery.Hello(card=card, peers=peers))
    with trio.fail_after(10):
        await ms.receive()
    await ms.close()


async def test_no_peer_can_make_a_node_remember_addresses_elsewhere_or_without_bound(
    tmp_path: Path,
) -> None:
    """Members that connect and sign records naming addresses at another IP (a victim), and
    many of them: the node remembers only addresses at the IP each connected from, at most
    4 per peer, at most ``peer_store_size`` peers; the peers they relay not at all."""
    a = make_node(tmp_path, "a", "none", discovery={"peer_store_size": 4})
    victim = ["/ip4/10.9.9.9/tcp/22", "/ip4/10.9.9.9/tcp/80"]
    local = [f"/ip4/127.0.0.1/tcp/{p}" for p in range(40001, 40011)]
    relayed_key = create_new_key_pair()
    relayed = discovery.PeerRef(
        peer_id=peer_id_of(relayed_key),
        addrs=[],
        addr_record=sign_addr_record(relayed_key, ["/ip4/127.0.0.1/tcp/40100"], 1).encoded,
    )
    keys = [create_new_key_pair() for _ in range(6)]
    members = [member_host(tmp_path, key) for key in keys]
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        for key, m in zip(keys, members, strict=True):
            async with m.run(LISTEN):
                await hello_from(key, m, a, [*victim, *local], [relayed])
        assert len(a.peer_store) == 4  # bounded
        for entry in a.peer_store.peers():
            assert entry.peer_id in {m.peer_id for m in members}
            assert len(entry.addrs) == 4 and not entry.dialled
            assert all(addr.startswith("/ip4/127.0.0.1/tcp/400") for addr in entry.addrs)
        assert a.peer_store.get(relayed.peer_id) is None  # hearsay is never remembered
        await wait_until(lambda: not a.peer_store.dirty, what="the store saved")
        text = Home(tmp_path / "a").peers_file.read_text()
        assert "10.9.9.9" not in text and relayed.peer_id not in text
        assert len(json.loads(text)["peers"]) == 4
        nursery.cancel_scope.cancel()


async def test_a_lost_member_is_redialled_past_its_cards_expiry_and_found_again(
    tmp_path: Path,
) -> None:
    """b goes away; a's card of it expires and a fails to dial it again and again — which
    used to make a forget it (5 failed dials, expired card). a keeps redialling it for
    ``redial_for_s``: b, restarted on its port with nothing remembered (it will not dial a),
    is found by a."""
    fast = {
        "card_ttl_s": 1,
        "dial_backoff_s": 0.2,
        "redial_backoff_max_s": 0.5,
        "redial_for_s": 120,
    }
    a = make_node(tmp_path, "a", "none", discovery=fast)
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        b = make_node(tmp_path, "b", "util", bootstrap=a.host.addrs(), discovery=fast)
        b_scope = await launch(nursery, b)
        b_scope.cancel()
        await wait_until(lambda: not b.home.runtime_file.exists(), what="b stopped")

        def failed_enough() -> bool:
            state = a.registry.get(b.peer_id)
            assert state is not None, "a forgot b"
            return state.failed_dials >= 2 * a.registry.FORGET_AFTER_FAILED_DIALS

        await wait_until(failed_enough, timeout_s=30, what="a failing to redial b")
        assert not a.registry.has_fresh_card(b.peer_id)
        b.home.peers_file.unlink()  # b remembers nobody: only a can bring it back
        again = make_node(tmp_path, "b", "util", discovery=fast)
        await launch(nursery, again)
        await wait_until(
            lambda: a.registry.has_fresh_card(b.peer_id), timeout_s=15, what="a finding b"
        )
        await routed_to(a, again, "echo-4")
        nursery.cancel_scope.cancel()


async def test_a_dead_address_before_a_live_one_and_a_recent_failure_do_not_block_a_dial(
    tmp_path: Path,
) -> None:
    """py-libp2p blocks a peer for 60 s once a dial of it failed (its negative cache): the
    live address after a dead one (a remembered old port before the new one), and a peer
    that came back seconds after a failed dial, would both be refused without a dial."""
    keys = [create_new_key_pair() for _ in range(2)]
    a, b = (member_host(tmp_path, k) for k in keys)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"/ip4/127.0.0.1/tcp/{probe.getsockname()[1]}/p2p/{b.peer_id}"
    with trio.fail_after(30):
        async with a.run(LISTEN):
            with pytest.raises(NodeUnreachableError):
                await a.connect(b.peer_id, [dead])  # b is not there yet
            async with b.run(LISTEN):
                await a.connect(b.peer_id, [dead, *b.addrs()])
                assert a.is_connected(b.peer_id)
