"""Discovery service: card exchange on connect and on refresh, and peer exchange.

A node that bootstrapped only to A learns of B from A's ``hello`` and dials B itself — but
only at addresses B signed (B's address record, which A relays verbatim), only a few new
peers per exchange (``max_dials_per_exchange``), only as many peers on A's word as
``max_peers_per_source`` allows, and never an address that failed recently (each failure
doubles its wait, up to ``dial_backoff_max_s``). One hostile hello cannot make the node
dial anywhere more than a handful of times, nor fill its peer table.

A node keeps its place in the swarm across restarts: the members it was connected to and
that sent it their card themselves are remembered in the peer store (:mod:`node.peerstore`)
at addresses it verified — the one it dialled, or those the peer signed at the IP its
connection came from, never an address elsewhere — and redialled at the next start,
alongside the bootstrap peers. A member that is lost is redialled for
``discovery.redial_for_s`` before it is forgotten.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import trio
from libp2p.crypto.keys import KeyPair

from node.addr_record import (
    AddrRecord,
    AddrRecordSigner,
    InvalidAddrRecordError,
    verify_addr_record,
)
from node.config import DiscoveryConfig, NetworkConfig
from node.errors import HomeError, NodeError
from node.p2p import ConnectionInfo, P2PHost, P2PStream, split_p2p_addr, valid_peer_id
from node.peerstore import PeerStore, verified_addrs
from node.registry import CardMismatchError, Learned, PeerRegistry
from protocols import discovery, logsafe
from protocols.errors import ProtocolError, ProtocolRefusedError, RemoteProtocolError
from protocols.framing import encode_frame
from protocols.stream import MessageStream
from protocols.versioning import dump_for, version_of

log = logging.getLogger(__name__)

MAX_CONCURRENT_EXCHANGES = 16
CURRENT_VERSION = version_of(discovery.PROTOCOL_ID)


class InvalidCardError(RemoteProtocolError):
    """The peer's card describes another node, or carries an invalid address record."""

    code = "invalid_card"


class DiscoveryService:
    def __init__(
        self,
        host: P2PHost,
        registry: PeerRegistry,
        card: Callable[[], discovery.NodeCard],
        network: NetworkConfig,
        config: DiscoveryConfig,
        *,
        key: KeyPair,
        store: PeerStore | None = None,
    ) -> None:
        self.host = host
        self.store = store
        self._store_error: str | None = None
        self.registry = registry
        self._base_card = card
        self.network = network
        self.config = config
        self._signer = AddrRecordSigner(key)
        self._wanted_send, self._wanted = trio.open_memory_channel[str](1024)
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT_EXCHANGES)
        self._inflight: set[str] = set()
        self.ticks = 0  # refresh ticks done (tests wait for them instead of for time)
        host.on_connection_change(self._on_connection)

    def card(self) -> discovery.NodeCard:
        """This node's card, with its signed address record."""
        record = self._signer.current(self.host.transport_addrs())
        return self._base_card().model_copy(update={"addr_record": record.encoded})

    # -- inbound -------------------------------------------------------------------------

    async def handle(self, stream: P2PStream) -> None:
        await self._serve(stream, CURRENT_VERSION)

    def legacy_handler(self, protocol_id: str) -> Callable[[P2PStream], Any]:
        """A handler for an older minor version of the protocol (docs/protocols.md §3.1)."""
        version = version_of(protocol_id)

        async def handle(stream: P2PStream) -> None:
            await self._serve(stream, version)

        return handle

    async def _serve(self, stream: P2PStream, version: str) -> None:
        ms = MessageStream(stream, discovery.CODEC, limits=self.network.frame_limits())
        try:
            hello = await ms.receive_within(self.network.request_timeout_s)
        except ProtocolError as exc:
            log.info("bad discovery request from %s: %s", stream.remote_peer, logsafe(exc))
            await _send_error_and_reset(ms, exc)
            return
        assert isinstance(hello, discovery.Hello)
        try:
            self._absorb(hello, stream.remote_peer, stream.connection())
        except InvalidCardError as exc:
            await ms.send_error(exc.code, exc.message)
            await ms.close()
            return
        reply = self._hello(exclude=stream.remote_peer)
        if version == CURRENT_VERSION:
            await ms.send(reply)
        else:
            obj = dump_for(reply, version)
            await ms.stream.write(encode_frame(obj, self.network.max_frame_size))
        await ms.close()

    # -- outbound ------------------------------------------------------------------------

    async def exchange(self, peer_id: str) -> None:
        """Swap hellos with a connected (or dialable) peer. Raises NodeError/ProtocolError.

        A peer that refuses this version's protocol id (an older node, or a peer in another
        language written for an older version) is asked again on the older ids, newest
        first, with the hello that version defines (docs/protocols.md §3.1)."""
        ids = (discovery.PROTOCOL_ID, *discovery.LEGACY_PROTOCOL_IDS)
        for i, protocol_id in enumerate(ids):
            try:
                await self._exchange_on(peer_id, protocol_id)
                return
            except ProtocolRefusedError:
                if i == len(ids) - 1:
                    raise
                log.debug("peer %s refused %s; asking on %s", peer_id, protocol_id, ids[i + 1])

    async def _exchange_on(self, peer_id: str, protocol_id: str) -> None:
        stream = await self.host.open_stream(peer_id, protocol_id)
        ms = MessageStream(stream, discovery.CODEC, limits=self.network.frame_limits())
        try:
            hello = self._hello(exclude=peer_id)
            version = version_of(protocol_id)
            if version == CURRENT_VERSION:
                await ms.send(hello)
            else:
                obj = dump_for(hello, version)
                await ms.stream.write(encode_frame(obj, self.network.max_frame_size))
            reply = await ms.receive_within(self.network.request_timeout_s)
            assert isinstance(reply, discovery.Hello)
            self._absorb(reply, peer_id, stream.connection())
        except BaseException:
            await ms.reset()
            raise
        await ms.close()

    async def bootstrap(self, addrs: list[str]) -> list[str]:
        """Dial each bootstrap address and exchange cards. Returns the peers reached."""
        reached: list[str] = []

        async def one(addr: str) -> None:
            try:
                peer_id, _ = split_p2p_addr(addr)
            except ValueError as exc:
                log.error("bootstrap address ignored: %s", exc)
                return
            self.registry.learn(peer_id, [addr])
            try:
                await self._dial(peer_id, [addr])
                await self.exchange(peer_id)
                reached.append(peer_id)
            except (NodeError, ProtocolError) as exc:
                log.warning("bootstrap peer %s unreachable: %s", addr, exc)
            except Exception:
                log.exception("bootstrap through %s failed unexpectedly", addr)

        async with trio.open_nursery() as nursery:
            for addr in addrs:
                nursery.start_soon(one, addr)
        return reached

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Redial the peers remembered from the last run and bootstrap (at once), then
        keep cards fresh, dial peers learned by exchange and save the peer store."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._exchange_worker)
                self._redial_remembered()
                await self.bootstrap(self.network.bootstrap)
                await self._save_store()
                task_status.started()
                while True:
                    self._refresh()
                    self.ticks += 1
                    await self._save_store()
                    await trio.sleep(self.config.refresh_interval_s)
        finally:
            self._save_store_now()

    # -- the peer store --------------------------------------------------------------------

    def _redial_remembered(self) -> None:
        """Put the peers remembered from the last run in the registry and dial them now
        (those whose dial fails are redialled by the refresh, as backoff allows, for
        ``redial_for_s``). A bootstrap peer is dialled by the bootstrap."""
        if self.store is None:
            return
        bootstrap = set()
        for addr in self.network.bootstrap:
            with contextlib.suppress(ValueError):
                bootstrap.add(split_p2p_addr(addr)[0])
        remembered = self.store.load()
        for peer in remembered:
            self.registry.remember(peer.peer_id, list(peer.addrs))
            if peer.peer_id not in bootstrap and self.registry.get(peer.peer_id) is not None:
                self._want(peer.peer_id)
        if remembered:
            log.info("redialling %d peer(s) remembered from the last run", len(remembered))

    def _remember(
        self,
        peer_id: str,
        card: discovery.NodeCard,
        record: AddrRecord | None,
        conn: ConnectionInfo | None,
    ) -> None:
        """Remember a member that just sent its card itself, at the addresses this node
        verified (:func:`node.peerstore.verified_addrs`: the one it dialled, or the peer's
        own at the IP its connection comes from; never an address elsewhere)."""
        if self.store is None or conn is None or self.registry.is_excluded(peer_id):
            return
        own = list(record.addrs) if record is not None else card.addrs
        verified = verified_addrs(peer_id, own[: discovery.messages.MAX_ADDRS], conn)
        self.store.saw(peer_id, verified, dialled=conn.outbound)

    async def _save_store(self) -> None:
        if self.store is None:
            return
        data = self.store.snapshot()
        if data is None:
            return
        try:
            await trio.to_thread.run_sync(self.store.write, data)
        except HomeError as exc:
            self._store_failed(exc)
        else:
            self._store_error = None

    def _save_store_now(self) -> None:
        """The last save, as the node stops (synchronous: the loop is being cancelled)."""
        if self.store is None:
            return
        try:
            self.store.save()
        except HomeError as exc:
            self._store_failed(exc)

    def _store_failed(self, exc: HomeError) -> None:
        assert self.store is not None
        self.store.dirty = True  # tried again at the next tick
        if str(exc) != self._store_error:  # once per distinct problem, not every tick
            log.warning("%s: the peers this node knows are not remembered for now", exc)
            self._store_error = str(exc)

    # -- internals -----------------------------------------------------------------------

    def _hello(self, *, exclude: str | None) -> discovery.Hello:
        peers = self.registry.peer_refs(discovery.messages.MAX_PEERS, exclude=exclude)
        return discovery.Hello(card=self.card(), peers=peers)

    def _check_card(self, card: discovery.NodeCard, from_peer: str) -> AddrRecord | None:
        if card.peer_id != from_peer:
            # the registry refuses it too; checked first so no record is verified for it
            raise CardMismatchError(
                f"peer {from_peer} sent a card for {card.peer_id}; cards are accepted only "
                "from the node they describe"
            )
        if card.addr_record is None:
            return None  # a 0.1.0 peer: its card's addresses are its own word, first-hand
        return verify_addr_record(card.addr_record, from_peer)

    def _absorb(
        self, hello: discovery.Hello, from_peer: str, conn: ConnectionInfo | None = None
    ) -> None:
        try:
            record = self._check_card(hello.card, from_peer)
        except (CardMismatchError, InvalidAddrRecordError) as exc:
            self.registry.exclude(from_peer, f"sent an invalid card: {exc}")
            raise InvalidCardError(str(exc)) from None
        if self.registry.accept_card(hello.card, from_peer, record) is not None:
            self._remember(from_peer, hello.card, record, conn)
        self.registry.set_connected(from_peer, self.host.is_connected(from_peer))
        self._learn_peers(hello.peers, from_peer)

    def _learn_peers(self, refs: list[discovery.PeerRef], source: str) -> None:
        """Peer exchange: believe only records the peers signed themselves; dial at most
        ``max_dials_per_exchange`` new ones now (the refresh picks up the rest, within the
        same limit per tick); remember at most ``max_peers_per_source`` on ``source``'s word,
        and verify at most that many records per hello (signatures cost CPU)."""
        dials = unsigned = invalid = refused = verified = 0
        for ref in refs:
            if ref.peer_id in (self.host.peer_id, source) or not valid_peer_id(ref.peer_id):
                continue
            if ref.addr_record is None:
                unsigned += 1
                continue
            known = self.registry.get(ref.peer_id)
            if known is None and not self.registry.can_learn_from(source):
                refused += 1  # checked before the signature: verifying costs CPU
                continue
            if known is not None and known.record and known.record.encoded == ref.addr_record:
                continue
            if verified >= self.config.max_peers_per_source:
                refused += 1  # bounded CPU per hello; the next hello brings the rest
                continue
            verified += 1
            try:
                record = verify_addr_record(ref.addr_record, ref.peer_id)
            except InvalidAddrRecordError as exc:
                invalid += 1
                log.debug("peer %s relayed an invalid record: %s", source, exc)
                continue
            learned = self.registry.learn_record(record, source)
            if learned is Learned.REFUSED:
                refused += 1
            elif learned is Learned.NEW:
                log.info("learned of peer %s from %s", ref.peer_id, source)
                if dials < self.config.max_dials_per_exchange and not self.host.is_connected(
                    ref.peer_id
                ):
                    self._want(ref.peer_id)
                    dials += 1
        if unsigned or invalid or refused:
            log.info(
                "peer exchange with %s: ignored %d peer(s) without a signed address record, "
                "%d with an invalid one, %d over its quota of %d or this hello's",
                source,
                unsigned,
                invalid,
                refused,
                self.config.max_peers_per_source,
            )

    def _on_connection(self, peer_id: str, up: bool) -> None:
        self.registry.set_connected(peer_id, up)
        known = self.registry.get(peer_id) is not None
        if up and known and not self.registry.has_fresh_card(peer_id):
            self._want(peer_id)

    def _want(self, peer_id: str) -> None:
        if peer_id in self._inflight:
            return
        try:
            self._wanted_send.send_nowait(peer_id)
            self._inflight.add(peer_id)
        except trio.WouldBlock:
            log.debug("discovery queue full; %s will be picked up by the next refresh", peer_id)

    def _refresh(self) -> None:
        connected = self.host.connected_peers()
        for state in self.registry.all():
            state.connected = state.peer_id in connected
            if state.connected and self.registry.card_age_fraction(state.peer_id) > 0.5:
                self._want(state.peer_id)
        # peers only heard of are dialled a few per tick; known ones as their backoff allows
        new_dials = 0
        for state in self.registry.to_dial(retry_after_s=self.config.refresh_interval_s * 2):
            if state.hearsay:
                if new_dials >= self.config.max_dials_per_exchange:
                    continue
                new_dials += 1
            self._want(state.peer_id)

    async def _dial(self, peer_id: str, addrs: list[str]) -> None:
        """Dial ``peer_id`` at ``addrs``, recording the outcome per address (backoff)."""
        self.registry.dial_started(peer_id, addrs)
        ok = False
        try:
            await self.host.connect(peer_id, addrs)
            ok = True
        finally:
            if self.registry.dial_ended(peer_id, addrs, ok=ok):
                log.info("forgot peer %s: unreachable and its card expired", peer_id)

    async def _exchange_worker(self) -> None:
        async with trio.open_nursery() as nursery:
            async for peer_id in self._wanted:
                await self._limiter.acquire_on_behalf_of(peer_id)
                nursery.start_soon(self._exchange_one, peer_id)

    async def _exchange_one(self, peer_id: str) -> None:
        try:
            if not self.host.is_connected(peer_id):
                addrs = self.registry.dialable_addrs(peer_id)
                if not addrs:
                    return  # unknown, no address, or every address backed off
                await self._dial(peer_id, addrs)
            elif self.registry.has_fresh_card(peer_id) and (
                self.registry.card_age_fraction(peer_id) < 0.5
            ):
                return
            await self.exchange(peer_id)
        except (NodeError, ProtocolError) as exc:
            log.info("card exchange with %s failed: %s", peer_id, logsafe(exc))
        except Exception:
            # a peer must never be able to take the node down through discovery
            log.exception("card exchange with %s failed unexpectedly", peer_id)
        finally:
            self._inflight.discard(peer_id)
            self._limiter.release_on_behalf_of(peer_id)


async def _send_error_and_reset(ms: MessageStream[Any], exc: ProtocolError) -> None:
    with contextlib.suppress(ProtocolError):
        await ms.send_error(exc.code, exc.message)
    await ms.reset()
