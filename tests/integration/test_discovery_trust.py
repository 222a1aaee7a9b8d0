"""Attacks on peer exchange and placement, made as an attacker would: a separate libp2p host
with a key of its own, speaking the hivemesh protocols to real nodes on loopback."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from node import identity
from node.addr_record import sign_addr_record, verify_addr_record
from node.client import request
from node.daemon import Node
from node.handoff import delegate
from node.home import Home
from node.p2p import P2PHost, P2PStream
from protocols import control, discovery, handoff
from protocols.canonical import json_sha256
from protocols.framing import FrameDecoder, encode_frame
from protocols.handoff.messages import HandoffMessage
from protocols.handoff.receipt import receipt_payload, signed_bytes
from protocols.stream import MessageStream
from tests.integration.harness import launch, make_node, member_host, swarm_key, wait_until
from workflows.dsl import parse_workflow
from workflows.status import WorkflowStatus
from workflows.tools import ToolRegistry

pytestmark = pytest.mark.usefixtures("ray_cluster")

LISTEN = ["/ip4/127.0.0.1/tcp/0"]
TOOLS = ToolRegistry.from_entry_points("all")

SECRET = """
id: secret
inputs:
  - name: text
    default: "one two three"
steps:
  - name: shout
    tool: text.upper
    inputs: [{name: text, value: "{{inputs.text}}"}]
  - name: count
    tool: text.word_count
    inputs: [{name: text, value: "{{steps.shout.outputs.result}}"}]
outputs:
  - {name: shouted, value: "{{steps.shout.outputs.result}}"}
  - {name: words, value: "{{steps.count.outputs.result}}"}
"""

SHOUT = """
id: shout
steps:
  - name: shout
    tool: text.upper
    inputs: [{name: text, value: "psst"}]
outputs:
  - {name: shouted, value: "{{steps.shout.outputs.result}}"}
"""

Reply = Callable[["Impostor", handoff.Offer, str], HandoffMessage]


def peer_of(key: KeyPair) -> str:
    return str(ID.from_pubkey(key.public_key))


class Impostor:
    """A stranger with its own key: its card says what it likes; it answers handoff offers
    with ``reply(offer)`` (after an ``accept``) and keeps every offer it got."""

    def __init__(
        self,
        tmp: Path,
        tools: list[str],
        *,
        load: tuple[int, int] = (0, 100_000),
        reply: Reply | None = None,
    ) -> None:
        self.key = create_new_key_pair()
        self.host = member_host(tmp, self.key)
        self.peer_id = self.host.peer_id
        self.tools = tools
        self.load = load
        self.reply = reply or (lambda me, o, by: me.result(o, by, {"result": "FAKE"}))
        self.offers: list[handoff.Offer] = []
        self.host.set_handler(discovery.PROTOCOL_ID, self._on_hello)
        self.host.set_handler(handoff.PROTOCOL_ID, self._on_offer)

    def result(
        self,
        offer: handoff.Offer,
        delegator: str,
        outputs: dict[str, Any],
        handoff_id: str | None = None,
    ) -> handoff.StepResult:
        """A result for ``offer`` with a receipt this impostor really signed: what it says
        is checked on its merits (schema, protocol), not refused for the signature."""
        payload = receipt_payload(
            handoff_id=offer.handoff_id,
            epoch=offer.epoch,
            delegator=delegator,
            delegatee=self.peer_id,
            tool=offer.tool,
            tool_version="1.0.0",
            args_sha256=json_sha256(offer.args),
            outputs_sha256=json_sha256(outputs),
        )
        return handoff.StepResult(
            handoff_id=handoff_id or offer.handoff_id,
            epoch=offer.epoch,
            outputs=outputs,
            duration_ms=1,
            receipt=handoff.Receipt(
                tool_version="1.0.0",
                args_sha256=payload["args_sha256"],
                outputs_sha256=payload["outputs_sha256"],
                signature=identity.sign(self.key, signed_bytes(payload)),
            ),
        )

    def card(self) -> discovery.NodeCard:
        return discovery.NodeCard(
            peer_id=self.peer_id,
            addrs=self.host.addrs(),
            version="0.1.0",
            tools=[discovery.ToolCard(**TOOLS.get(t).spec()) for t in self.tools],
            load=discovery.LoadInfo(running=self.load[0], capacity=self.load[1]),
            ttl_s=600,
        )

    async def _on_hello(self, stream: P2PStream) -> None:
        ms = MessageStream(stream, discovery.CODEC)
        await ms.receive()
        await ms.send(discovery.Hello(card=self.card()))
        await ms.close()

    async def _on_offer(self, stream: P2PStream) -> None:
        ms = MessageStream(stream, handoff.CODEC)
        offer = await ms.receive()
        assert isinstance(offer, handoff.Offer)
        self.offers.append(offer)
        await ms.send(handoff.Accept(handoff_id=offer.handoff_id, epoch=offer.epoch))
        await ms.send(self.reply(self, offer, stream.remote_peer))
        await ms.close()

    async def say_hello(self, node: Node, peers: list[discovery.PeerRef] | None = None) -> None:
        """Connect to ``node`` and send one hello (with ``peers`` as its peer exchange)."""
        await self.host.connect(node.peer_id, node.host.addrs())
        ms = MessageStream(
            await self.host.open_stream(node.peer_id, discovery.PROTOCOL_ID),
            discovery.CODEC,
            max_frame_size=node.config.network.max_frame_size,
        )
        await ms.send(discovery.Hello(card=self.card(), peers=peers or []))
        with trio.fail_after(10):
            await ms.receive()
        await ms.close()


async def wait_ticks(node: Node, ticks: int) -> None:
    """Let ``node``'s discovery run ``ticks`` refresh rounds (its dials happen in them)."""
    target = node.discovery.ticks + ticks
    await wait_until(lambda: node.discovery.ticks >= target, timeout_s=60, what="refresh ticks")


async def test_one_hello_listing_256_made_up_peers_causes_at_most_a_few_dials(
    tmp_path: Path,
) -> None:
    """Amplification: a hello naming 256 peers that all live at an address of the
    attacker's choosing (where it counts connection attempts)."""
    a = make_node(tmp_path, "a", "none")
    limits = a.config.discovery
    attempts = 0

    async def count(conn: trio.SocketStream) -> None:
        nonlocal attempts
        attempts += 1
        await conn.aclose()

    attacker = Impostor(tmp_path, [])
    async with trio.open_nursery() as nursery, attacker.host.run(LISTEN):
        await launch(nursery, a)
        listeners = await nursery.start(partial(trio.serve_tcp, count, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        victim = f"/ip4/127.0.0.1/tcp/{port}"
        keys = [create_new_key_pair() for _ in range(256)]

        # made-up peers with bare addresses: nobody vouches for them, nothing is dialled
        bare = [
            discovery.PeerRef(peer_id=peer_of(k), addrs=[f"{victim}/p2p/{peer_of(k)}"])
            for k in keys
        ]
        await attacker.say_hello(a, bare)
        await wait_ticks(a, 25)
        assert attempts == 0
        assert len(a.registry) == 1  # the attacker itself, first-hand

        # the same peers, each with a valid record signed by its own key: still only a few
        signed = [
            discovery.PeerRef(
                peer_id=peer_of(k),
                addrs=[f"{victim}/p2p/{peer_of(k)}"],
                addr_record=sign_addr_record(k, [victim], 1).encoded,
            )
            for k in keys
        ]
        await attacker.say_hello(a, signed)
        await wait_ticks(a, 25)
        assert 1 <= attempts <= limits.max_dials_per_exchange
        assert len(a.registry) <= 1 + limits.max_peers_per_source
        assert a.registry.hearsay_from(attacker.peer_id) == limits.max_peers_per_source
        backoff = a.registry.backoff(victim)
        # the address is backed off after each failure (a dial may be under way right now)
        assert backoff is not None and attempts - 1 <= backoff.failures <= attempts
        # and the node passes none of them on
        assert a.registry.peer_refs(256) == []
        nursery.cancel_scope.cancel()


async def test_a_strangers_huge_idle_card_does_not_attract_the_next_workflow(
    tmp_path: Path,
) -> None:
    """Hijack: a card claiming the text tools with load 0/100000, from a peer that never ran
    a step for this node, against a peer with a record whose card says it is busy."""
    slow_cards = {"discovery": {"card_ttl_s": 600}}  # no refresh unless the test asks
    a = make_node(tmp_path, "a", "text,util", **slow_cards)
    stranger = Impostor(tmp_path, ["text.upper", "text.word_count"], load=(0, 100_000))
    async with trio.open_nursery() as nursery, stranger.host.run(LISTEN):
        await launch(nursery, a)
        c = make_node(tmp_path, "c", "none", bootstrap=a.host.addrs(), **slow_cards)
        await launch(nursery, c)
        await wait_until(lambda: c.registry.has_fresh_card(a.peer_id), what="c learning a")
        wid, _ = await c.workflows.submit(parse_workflow(SECRET), {}, "before")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error

        # the attacker keeps a busy for a moment, and c hears of it in a's card
        nap = handoff.Offer(
            handoff_id="keep-a-busy",
            workflow_id="w",
            step="nap",
            tool="util.sleep",
            args={"seconds": 3},
            deadline_ms=30_000,
        )
        await stranger.host.connect(a.peer_id, a.host.addrs())
        nursery.start_soon(
            partial(delegate, network=a.config.network, config=a.config.handoff),
            stranger.host,
            a.peer_id,
            nap,
        )
        await wait_until(lambda: a.handoff.running == 1, what="a running the nap")
        await c.discovery.exchange(a.peer_id)
        a_card = c.registry.get(a.peer_id)
        assert a_card is not None and a_card.card is not None
        assert a_card.card.load.running == 1

        await stranger.say_hello(c)
        await wait_until(lambda: c.registry.has_fresh_card(stranger.peer_id), what="the card")
        wid, _ = await c.workflows.submit(
            parse_workflow(SECRET), {"text": "my confidential sentence"}, "after"
        )
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.outputs == {"shouted": "MY CONFIDENTIAL SENTENCE", "words": 3}
        assert stranger.offers == []  # it never saw the inputs
        for step in view.steps:
            assert step.node == a.peer_id
            assert step.reason is not None
            assert "best of 2 peers" in step.reason and "done for us" in step.reason
            assert "its card claims 0/100000" in step.reason
        a_state = c.registry.get(a.peer_id)
        assert a_state is not None and a_state.done == 4  # two workflows of two steps
        await wait_until(lambda: a.handoff.running == 0, what="the nap's end")
        nursery.cancel_scope.cancel()


async def test_a_peer_whose_result_fails_the_output_schema_is_excluded(tmp_path: Path) -> None:
    """A peer answering text.upper with a number: a failed attempt, the peer excluded (the
    control protocol's ``peers`` says why), and its next offer goes to an honest peer."""
    liar = Impostor(
        tmp_path,
        ["text.upper"],
        load=(0, 4),
        reply=lambda me, o, by: me.result(o, by, {"result": 5}),
    )
    c = make_node(tmp_path, "c", "none")
    async with trio.open_nursery() as nursery, liar.host.run(LISTEN):
        await launch(nursery, c)
        await liar.say_hello(c)
        await wait_until(lambda: c.registry.has_fresh_card(liar.peer_id), what="the card")
        wid, _ = await c.workflows.submit(parse_workflow(SHOUT), {}, "lied-to")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED
        assert len(liar.offers) == 1
        assert "fails the tool's output schema: result: expected string" in (view.error or "")
        assert c.registry.is_excluded(liar.peer_id)

        key = Home(tmp_path / "c").load_client_key()
        reply = await request(
            key, c.host.addrs()[0], control.PeersRequest(), swarm_key=swarm_key(tmp_path)
        )
        assert isinstance(reply, control.Peers)
        (entry,) = [p for p in reply.peers if p.peer_id == liar.peer_id]
        assert entry.excluded is not None
        assert "output schema" in entry.excluded.reason
        assert 0 < entry.excluded.remaining_s <= c.config.placement.exclude_s
        assert entry.evidence is not None and entry.evidence.failed == 1
        assert entry.evidence.done == 0 and entry.load == "0/4"

        # an honest peer appears: the next workflow goes there, not to the excluded liar
        a = make_node(tmp_path, "a", "text", bootstrap=c.host.addrs())
        await launch(nursery, a)
        await wait_until(lambda: c.registry.has_fresh_card(a.peer_id), what="a's card")
        wid, _ = await c.workflows.submit(parse_workflow(SHOUT), {}, "honest")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.outputs == {"shouted": "PSST"}
        assert view.steps[0].node == a.peer_id and len(liar.offers) == 1
        nursery.cancel_scope.cancel()


async def test_a_peer_that_breaks_the_handoff_protocol_is_excluded(tmp_path: Path) -> None:
    """A peer answering an offer with a result for another handoff: a failed attempt, and
    the peer is excluded with the reason."""
    garbler = Impostor(
        tmp_path,
        ["text.upper"],
        load=(0, 4),
        reply=lambda me, o, by: me.result(
            o, by, {"result": "X"}, handoff_id=o.handoff_id + "-other"
        ),
    )
    c = make_node(tmp_path, "c", "none")
    async with trio.open_nursery() as nursery, garbler.host.run(LISTEN):
        await launch(nursery, c)
        await garbler.say_hello(c)
        await wait_until(lambda: c.registry.has_fresh_card(garbler.peer_id), what="the card")
        wid, _ = await c.workflows.submit(parse_workflow(SHOUT), {}, "garbled")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED
        assert len(garbler.offers) == 1
        assert "is excluded: peer" in (view.error or "")
        exclusion = c.registry.exclusion(garbler.peer_id)
        assert exclusion is not None and "about another handoff" in exclusion.reason
        nursery.cancel_scope.cancel()


async def _raw_exchange(host: P2PHost, peer_id: str, protocol: str, obj: dict[str, Any]) -> Any:
    """Send one JSON object on a fresh ``protocol`` stream; return the decoded answer."""
    stream = await host.open_stream(peer_id, protocol)
    await stream.write(encode_frame(obj))
    decoder = FrameDecoder(4 * 1024 * 1024)
    with trio.fail_after(10):
        while True:
            data = await stream.read(65536)
            assert data, "the stream ended before the answer"
            frames = decoder.feed(data)
            if frames:
                await stream.close()
                return frames[0]


async def test_cards_carry_signed_records_and_0_1_peers_get_the_0_1_messages(
    tmp_path: Path,
) -> None:
    """Discovery 0.2.0 cards carry the node's signed address record; a peer speaking 0.1.0
    (and a 0.1.0 client) is still served, with no member it would reject."""
    a = make_node(tmp_path, "a", "text")
    old = Impostor(tmp_path, [])
    async with trio.open_nursery() as nursery, old.host.run(LISTEN):
        await launch(nursery, a)
        await old.host.connect(a.peer_id, a.host.addrs())
        card = old.card().model_dump(mode="json", exclude={"addr_record"})

        new_reply = await _raw_exchange(
            old.host, a.peer_id, discovery.PROTOCOL_ID, {"type": "hello", "card": card}
        )
        record = verify_addr_record(new_reply["card"]["addr_record"], a.peer_id)
        assert {f"{addr}/p2p/{a.peer_id}" for addr in record.addrs} == set(a.host.addrs())

        old_reply = await _raw_exchange(
            old.host, a.peer_id, "/hivemesh/discovery/0.1.0", {"type": "hello", "card": card}
        )
        assert old_reply["type"] == "hello" and "addr_record" not in old_reply["card"]
        assert old_reply["card"]["peer_id"] == a.peer_id
        assert a.registry.has_fresh_card(old.peer_id)  # its 0.1.0 card was taken

        client = member_host(tmp_path, Home(tmp_path / "a").load_client_key())
        async with client.run(LISTEN):
            await client.connect(a.peer_id, a.host.addrs())
            peers = await _raw_exchange(
                client, a.peer_id, "/hivemesh/control/0.1.0", {"type": "peers"}
            )
        assert peers["type"] == "peers"
        assert [set(p) for p in peers["peers"]] == [
            {"peer_id", "addrs", "tools", "connected", "version", "last_seen"}
        ]
        nursery.cancel_scope.cancel()


async def test_a_peer_that_speaks_only_an_older_discovery_is_reached_on_it(
    tmp_path: Path,
) -> None:
    """A node bootstrapping to a peer that serves only discovery 0.2.0 (an older node, or a
    peer written for that version) is refused on 0.3.0, asks again on 0.2.0 with the hello
    that version defines (no 0.3.0 members), and learns the peer's card."""
    old = Impostor(tmp_path, ["text.upper"])
    received: list[dict[str, Any]] = []

    async def on_old_hello(stream: P2PStream) -> None:
        decoder = FrameDecoder(1 << 20)
        while not (frames := list(decoder.feed(await stream.read(65536)))):
            pass
        received.append(frames[0])
        reply = discovery.Hello(card=old.card())
        await stream.write(
            encode_frame(reply.model_dump(mode="json", exclude={"card": {"installs"}}), 1 << 20)
        )
        await stream.close()

    old.host = member_host(tmp_path, old.key)
    old.host.set_handler(discovery.LEGACY_PROTOCOL_IDS[0], on_old_hello)
    a = make_node(tmp_path, "a", "none")
    async with trio.open_nursery() as nursery, old.host.run(["/ip4/127.0.0.1/tcp/0"]):
        await launch(nursery, a)
        addr = f"{old.host.addrs()[0]}/p2p/{old.peer_id}"
        with trio.fail_after(20):
            assert await a.discovery.bootstrap([addr]) == [old.peer_id]
        assert a.registry.has_fresh_card(old.peer_id)
        assert received  # (one hello per exchange: bootstrap's, and the node's own rounds)
        assert all(h["type"] == "hello" and "installs" not in h["card"] for h in received)
        nursery.cancel_scope.cancel()
