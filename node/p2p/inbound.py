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
connections, and each accept task ends with its connection.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from libp2p.abc import IMuxedConn
from libp2p.io.abc import ReadWriteCloser
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm
from multiaddr import Multiaddr

log = logging.getLogger(__name__)


def install(swarm: Swarm, limiter: trio.CapacityLimiter) -> None:
    """Make ``swarm`` serve inbound connections with :func:`serve_inbound`, bounded by
    ``limiter`` (one token per handshake or live inbound connection)."""

    async def handle(read_write_closer: ReadWriteCloser, maddr: Multiaddr) -> None:
        await serve_inbound(swarm, limiter, read_write_closer, maddr)

    # the swarm's listeners call self._handle_inbound_connection (an attribute lookup per
    # connection), so an instance attribute replaces the method for this swarm only
    setattr(swarm, "_handle_inbound_connection", handle)  # noqa: B010 (mypy: a method)


async def serve_inbound(
    swarm: Swarm,
    limiter: trio.CapacityLimiter,
    read_write_closer: ReadWriteCloser,
    maddr: Multiaddr,
) -> None:
    """Upgrade one accepted connection and hold a slot of ``limiter`` until it closes."""
    try:
        # synchronous: no checkpoint between the check and the take
        limiter.acquire_nowait()
    except trio.WouldBlock:
        log.debug(
            "inbound connection refused: %d connections or handshakes already",
            int(limiter.total_tokens),
        )
        await _close_quietly(read_write_closer)
        return
    try:
        conn = await _upgrade(swarm, read_write_closer, maddr)
        if conn is not None:
            await conn.event_closed.wait()
    finally:
        limiter.release()


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
