"""The TCP transport of hivemesh's libp2p host: py-libp2p's, with listeners that serve
sockets bound without ``SO_REUSEPORT`` (see :mod:`node.p2p.listen` for why)."""

from __future__ import annotations

import logging
import socket
from typing import Any

import multiaddr
import trio
from libp2p.abc import IListener
from libp2p.custom_types import THandler
from libp2p.io.trio import TrioTCPStream
from libp2p.transport.exceptions import OpenConnectionError
from libp2p.transport.tcp.tcp import TCP
from libp2p.utils.multiaddr_utils import multiaddr_from_socket

from node.errors import ListenError
from node.p2p.listen import ListenSockets, bind_tcp

log = logging.getLogger(__name__)


class ExclusiveTCP(TCP):
    """py-libp2p's TCP transport (dialling unchanged) whose listeners serve sockets bound
    by :func:`bind_tcp`: taken from :attr:`sockets` when the host set them, else bound on
    the spot."""

    def __init__(self) -> None:
        super().__init__()
        self.sockets: ListenSockets | None = None

    def create_listener(self, handler_function: THandler) -> ExclusiveTCPListener:  # type: ignore[override]
        return ExclusiveTCPListener(handler_function, self)

    def take_socket(self, addr: str) -> socket.socket:
        sock = self.sockets.take(addr) if self.sockets is not None else None
        if sock is not None:
            return sock
        try:
            return bind_tcp(addr)
        except ListenError as exc:
            raise OpenConnectionError(str(exc)) from None


class ExclusiveTCPListener(IListener):
    """Serves TCP sockets bound without ``SO_REUSEPORT``.

    Its accept loops run in the swarm's background nursery (the swarm sets
    ``background_nursery`` before it calls :meth:`listen`), so they end with the swarm;
    :meth:`close` ends them sooner."""

    def __init__(self, handler: THandler, transport: ExclusiveTCP) -> None:
        self._handler = handler
        self._transport = transport
        self._listeners: list[trio.SocketListener] = []
        self._scopes: list[trio.CancelScope] = []
        self._closed = False
        self.background_nursery: trio.Nursery | None = None

    async def listen(self, maddr: multiaddr.Multiaddr) -> None:
        if self._closed:
            raise OpenConnectionError(f"cannot listen on {maddr}: listener is closed")
        nursery = self.background_nursery
        if nursery is None:
            raise OpenConnectionError(f"cannot listen on {maddr}: the swarm is not running")
        sock = self._transport.take_socket(str(maddr))
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        self._listeners.append(listener)
        await nursery.start(self._serve, listener)

    async def _serve(self, listener: trio.SocketListener, task_status: Any) -> None:
        scope = trio.CancelScope()
        self._scopes.append(scope)
        with scope:
            await trio.serve_listeners(self._accepted, [listener], task_status=task_status)

    async def _accepted(self, stream: trio.SocketStream) -> None:
        try:
            await self._handler(TrioTCPStream(stream))
        except Exception:
            # one inbound connection failing (a stranger refused in the private-network
            # handshake, a peer gone) must not end the accept loop; libp2p logs the same
            log.debug("inbound TCP connection failed", exc_info=True)

    def get_addrs(self) -> tuple[multiaddr.Multiaddr, ...]:
        return tuple(multiaddr_from_socket(listener.socket) for listener in self._listeners)

    async def close(self) -> None:
        self._closed = True
        for scope in self._scopes:
            scope.cancel()
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            await listener.aclose()
