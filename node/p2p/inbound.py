"""Inbound connections, held for as long as each one lives (not as long as the swarm).

py-libp2p 0.8.1 bounds inbound connections with a capacity limiter
(``Swarm._inbound_limiter``, ``max_connections - min_connections`` = 250 slots by default):
``Swarm._handle_inbound_connection`` takes a slot when a connection is accepted and gives
it back in a ``finally``. But after the upgrade it waits for
``self.manager.wait_finished()``, the *swarm's* end (its "intentional barrier: keep handler
alive"), so a slot is returned only when the node stops: after 250 inbound connections,
however short-lived, every further one is closed at once. A node polled by the CLI (one
connection per command) went deaf after 250 ``hivemesh status``.

:func:`serve_inbound` replaces that method on our swarm instance. It takes a slot of the
same limiter, runs the same upgrade (private network, Noise, yamux, then ``add_conn``), and
waits for *that connection's* end: its :class:`~libp2p.network.connection.swarm_connection.
SwarmConn`'s ``event_closed`` (set first thing in ``SwarmConn.close()``, which every way a
connection ends goes through: a remote close or reset, our disconnect, a trim, the swarm's
close). The limit keeps its purpose, a bound on concurrent handshakes and live inbound
connections, and each accept task ends with its connection. When every slot is taken, the
oldest idle connection makes room for a newcomer (:class:`InboundConnections`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio
from libp2p.abc import IMuxedConn
from libp2p.io.abc import ReadWriteCloser
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm
from multiaddr import Multiaddr

log = logging.getLogger(__name__)


class InboundConnections:
    """The inbound connections of one swarm: at most ``limiter.total_tokens`` at once,
    handshakes included.

    When they are all taken, a newcomer does not simply get refused: the oldest connection
    that has been idle (no stream open) for ``idle_grace_s`` is closed to make room. A crowd
    of keys that connect and sit there therefore cannot keep an honest client out; one that
    keeps streams open is bounded by the stream limits (node/p2p/guard.py).

    The grace is short (0.5 s): it only has to cover a new connection's first stream, which
    a client or peer opens within milliseconds of its handshake; with 5 s, 400 keys that
    connected at once kept every newcomer out for their first 5 s (an honest client's
    ``info`` failed meanwhile). An honest peer evicted while idle redials when it next
    needs the node."""

    def __init__(
        self,
        limiter: trio.CapacityLimiter,
        *,
        idle_grace_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limiter = limiter
        self.idle_grace_s = idle_grace_s
        self._clock = clock
        self._live: dict[Any, float] = {}  # SwarmConn -> when it was registered
        self.refused = 0
        self.evicted = 0

    def _idle_victim(self) -> Any:
        now = self._clock()
        victim, oldest = None, now - self.idle_grace_s
        for conn, since in self._live.items():
            if since <= oldest and not conn.streams and not conn.is_closed:
                victim, oldest = conn, since
        return victim

    async def _room(self) -> bool:
        """Take a slot, evicting an idle connection if need be."""
        try:
            # synchronous: no checkpoint between the check and the take
            self.limiter.acquire_nowait()
            return True
        except trio.WouldBlock:
            pass
        victim = self._idle_victim()
        if victim is None:
            return False
        self.evicted += 1
        log.debug("closing idle inbound connection of %s to make room", victim.muxed_conn.peer_id)
        await _close_quietly(victim)
        # its slot is given back by its own task, which wakes up on the close
        with trio.move_on_after(1.0):
            await self.limiter.acquire()
            return True
        return False


def install(swarm: Swarm, connections: InboundConnections) -> None:
    """Make ``swarm`` serve inbound connections with :func:`serve_inbound`, bounded by
    ``connections``."""

    async def handle(read_write_closer: ReadWriteCloser, maddr: Multiaddr) -> None:
        await serve_inbound(swarm, connections, read_write_closer, maddr)

    # the swarm's listeners call self._handle_inbound_connection (an attribute lookup per
    # connection), so an instance attribute replaces the method for this swarm only
    setattr(swarm, "_handle_inbound_connection", handle)  # noqa: B010 (mypy: a method)


async def serve_inbound(
    swarm: Swarm,
    connections: InboundConnections,
    read_write_closer: ReadWriteCloser,
    maddr: Multiaddr,
) -> None:
    """Upgrade one accepted connection and hold a slot until it closes."""
    if not await connections._room():
        connections.refused += 1
        log.debug(
            "inbound connection refused: %d connections or handshakes already, none idle",
            int(connections.limiter.total_tokens),
        )
        await _close_quietly(read_write_closer)
        return
    try:
        conn = await _upgrade(swarm, read_write_closer, maddr)
        if conn is not None:
            connections._live[conn] = connections._clock()
            try:
                await conn.event_closed.wait()
            finally:
                connections._live.pop(conn, None)
    finally:
        connections.limiter.release()


async def _upgrade(swarm: Swarm, read_write_closer: ReadWriteCloser, maddr: Multiaddr) -> Any:
    """The connection's SwarmConn once it is registered, or None if it failed or is gone."""
    remote = swarm._build_remote_multiaddr(read_write_closer)
    if remote is not None and not await swarm.connection_gate.is_allowed(remote):
        await _close_quietly(read_write_closer)
        return None
    raw: RawConnection | None = None
    try:
        if isinstance(read_write_closer, IMuxedConn):  # QUIC and the like: already muxed
            muxed: IMuxedConn = read_write_closer
            await swarm.add_conn(muxed, direction="inbound")
        else:
            raw = RawConnection(read_write_closer, False)
            muxed = await swarm.upgrade_inbound_raw_conn(raw, maddr)
    except Exception as exc:
        # a failed handshake (a stranger, a peer gone, a banned peer): libp2p cleaned up
        log.debug("inbound connection on %s failed: %r", maddr, exc)
        await _close_quietly(raw if raw is not None else read_write_closer)
        return None
    # add_conn returns the SwarmConn but upgrade_inbound_raw_conn drops it: find it. None
    # found: it was closed already (trimmed as a duplicate, or the peer left).
    for conn in swarm.connections.get(muxed.peer_id, []):
        if conn.muxed_conn is muxed:
            return conn
    return None


async def _close_quietly(closer: Any) -> None:
    try:
        await closer.close()
    except Exception:
        log.debug("close of a refused inbound connection failed", exc_info=True)
