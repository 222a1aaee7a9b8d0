"""Discovery service: card exchange on connect and on refresh, and peer exchange.

A node that bootstrapped only to A learns of B from A's ``hello`` and dials B itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import trio

from node.config import DiscoveryConfig, NetworkConfig
from node.errors import NodeError
from node.p2p import P2PHost, P2PStream, split_p2p_addr, valid_peer_id
from node.registry import CardMismatchError, PeerRegistry
from protocols import discovery, logsafe
from protocols.errors import ProtocolError, RemoteProtocolError
from protocols.stream import MessageStream

log = logging.getLogger(__name__)

MAX_CONCURRENT_EXCHANGES = 16


class InvalidCardError(RemoteProtocolError):
    """The peer's card describes another node."""

    code = "invalid_card"


class DiscoveryService:
    def __init__(
        self,
        host: P2PHost,
        registry: PeerRegistry,
        card: Callable[[], discovery.NodeCard],
        network: NetworkConfig,
        config: DiscoveryConfig,
    ) -> None:
        self.host = host
        self.registry = registry
        self.card = card
        self.network = network
        self.config = config
        self._wanted_send, self._wanted = trio.open_memory_channel[str](1024)
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT_EXCHANGES)
        self._inflight: set[str] = set()
        host.on_connection_change(self._on_connection)

    # -- inbound -------------------------------------------------------------------------

    async def handle(self, stream: P2PStream) -> None:
        ms = MessageStream(stream, discovery.CODEC, max_frame_size=self.network.max_frame_size)
        try:
            hello = await ms.receive_within(self.network.request_timeout_s)
        except ProtocolError as exc:
            log.info("bad discovery request from %s: %s", stream.remote_peer, logsafe(exc))
            await _send_error_and_reset(ms, exc)
            return
        assert isinstance(hello, discovery.Hello)
        try:
            self._absorb(hello, stream.remote_peer)
        except CardMismatchError as exc:
            await ms.send_error("invalid_card", str(exc))
            await ms.close()
            return
        await ms.send(self._hello(exclude=stream.remote_peer))
        await ms.close()

    # -- outbound ------------------------------------------------------------------------

    async def exchange(self, peer_id: str) -> None:
        """Swap hellos with a connected (or dialable) peer. Raises NodeError/ProtocolError."""
        stream = await self.host.open_stream(peer_id, discovery.PROTOCOL_ID)
        ms = MessageStream(stream, discovery.CODEC, max_frame_size=self.network.max_frame_size)
        try:
            await ms.send(self._hello(exclude=peer_id))
            reply = await ms.receive_within(self.network.request_timeout_s)
            assert isinstance(reply, discovery.Hello)
            try:
                self._absorb(reply, peer_id)
            except CardMismatchError as exc:
                raise InvalidCardError(str(exc)) from None
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
                await self.host.connect(peer_id, [addr])
                self.registry.mark_dialed(peer_id)
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
        """Bootstrap, then keep cards fresh and dial peers learned by exchange."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._exchange_worker)
            await self.bootstrap(self.network.bootstrap)
            task_status.started()
            while True:
                self._refresh()
                await trio.sleep(self.config.refresh_interval_s)

    # -- internals -----------------------------------------------------------------------

    def _hello(self, *, exclude: str | None) -> discovery.Hello:
        peers = self.registry.peer_refs(discovery.messages.MAX_PEERS, exclude=exclude)
        return discovery.Hello(card=self.card(), peers=peers)

    def _absorb(self, hello: discovery.Hello, from_peer: str) -> None:
        self.registry.accept_card(hello.card, from_peer)
        self.registry.set_connected(from_peer, self.host.is_connected(from_peer))
        for ref in hello.peers:
            if ref.peer_id == self.host.peer_id or not valid_peer_id(ref.peer_id):
                continue
            if self.registry.learn(ref.peer_id, list(ref.addrs)):
                log.info("learned of peer %s from %s", ref.peer_id, from_peer)
                self._want(ref.peer_id)

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
        for state in self.registry.to_dial(retry_after_s=self.config.refresh_interval_s * 2):
            self._want(state.peer_id)

    async def _exchange_worker(self) -> None:
        async with trio.open_nursery() as nursery:
            async for peer_id in self._wanted:
                await self._limiter.acquire_on_behalf_of(peer_id)
                nursery.start_soon(self._exchange_one, peer_id)

    async def _exchange_one(self, peer_id: str) -> None:
        try:
            state = self.registry.get(peer_id)
            if not self.host.is_connected(peer_id):
                if state is None or not state.addrs:
                    return
                self.registry.mark_dialed(peer_id)
                try:
                    await self.host.connect(peer_id, state.addrs)
                except NodeError:
                    if self.registry.dial_failed(peer_id):
                        log.info("forgot peer %s: unreachable and its card expired", peer_id)
                    raise
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
