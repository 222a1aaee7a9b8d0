"""The libp2p private-network layer (pnet, "PSK v1"), wire-compatible with go-libp2p and
js-libp2p (``@libp2p/pnet``).

A private swarm's nodes share a 32-byte key. On every raw TCP connection, before
multistream-select negotiates the security protocol, each side sends a random 24-byte nonce;
from then on each side XORs every byte it writes with the XSalsa20 keystream of (key, its own
nonce) and every byte it reads with that of (key, the peer's nonce). py-libp2p's own ``psk``
option is not this (Salsa20, 8-byte nonce) and is not used.

The spec has no key confirmation: with a different key the bytes after the nonces decrypt to
noise. But the first plaintext bytes of every libp2p connection are the multistream-select
header, so both sides check the peer's first 20 plaintext bytes against it and refuse at
once when they differ. A peer without any key is recognised the same way (its header arrives
in clear where the nonce should be), and so is a keyed peer dialling an open node. Silence is
bounded by ``handshake_timeout_s``. An open node (no key) runs the same first-bytes check,
so it too can say *why* a connection failed.

:class:`PrivateNetworkUpgrader` plugs this into py-libp2p where raw connections are secured
(its ``TransportUpgrader.upgrade_security``), for inbound and outbound connections alike;
QUIC connections never pass there, which is why QUIC is refused under a swarm key.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import trio
from libp2p.abc import IRawConnection, ISecureConn
from libp2p.custom_types import TMuxerOptions, TSecurityOptions
from libp2p.io.exceptions import IOException
from libp2p.peer.id import ID
from libp2p.transport.exceptions import SecurityUpgradeFailure
from libp2p.transport.upgrader import TransportUpgrader
from multiaddr import Multiaddr

from node.p2p.xsalsa20 import NONCE_SIZE, XSalsa20
from node.swarmkey import SwarmKey

log = logging.getLogger(__name__)

# multistream-select 1.0's header, varint-length-prefixed: the first bytes that any libp2p
# peer sends on a connection once the private-network layer (if any) is in place.
MULTISTREAM_HEADER = b"\x13/multistream/1.0.0\n"
# the most a connection reads from its socket at once (see GuardedConnection.read)
READ_AHEAD = 64 * 1024

# The ways a handshake fails, phrased about the peer ("it"), for log lines and errors.
NO_KEY = "it has no swarm key"
OTHER_KEY = "it holds a different swarm key"
KEYED_PEER = "it holds a swarm key and this node is in an open swarm"
CLOSED = "it broke off the connection during the handshake"


def silent(timeout_s: float) -> str:
    return f"it sent no handshake within {timeout_s:g}s"


class PrivateNetworkRefused(SecurityUpgradeFailure):
    """The private-network handshake failed: the peer is not a member of this swarm.

    A :class:`SecurityUpgradeFailure`, so py-libp2p cleans the connection up as it does for
    any failed security handshake. ``reason`` is one of the phrases above."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PeerRefused(SecurityUpgradeFailure):
    """A member whose identity was just proven may not connect now (it is banned)."""


_IO_ERRORS = (IOException, OSError, trio.BrokenResourceError, trio.ClosedResourceError)


async def _read_exactly(raw: IRawConnection, n: int, *, plaintext_peer_means: str | None) -> bytes:
    """Read ``n`` bytes. If they start with a clear multistream header, the peer speaks
    libp2p without a private network: raise with ``plaintext_peer_means``."""
    buf = b""
    while len(buf) < n:
        try:
            chunk = await raw.read(n - len(buf))
        except _IO_ERRORS:
            raise PrivateNetworkRefused(CLOSED) from None
        if not chunk:
            raise PrivateNetworkRefused(CLOSED)
        buf += chunk
        if (
            plaintext_peer_means is not None
            and len(buf) >= len(MULTISTREAM_HEADER)
            and buf.startswith(MULTISTREAM_HEADER)
        ):
            raise PrivateNetworkRefused(plaintext_peer_means)
    return buf


async def exchange_nonces(
    raw: IRawConnection, key: SwarmKey, *, nonce: bytes | None = None
) -> tuple[XSalsa20, XSalsa20]:
    """The pnet handshake: send our nonce, read the peer's. Returns (write, read) ciphers.

    The caller bounds it in time."""
    local = os.urandom(NONCE_SIZE) if nonce is None else nonce
    try:
        await raw.write(local)
    except _IO_ERRORS:
        raise PrivateNetworkRefused(CLOSED) from None
    remote = await _read_exactly(raw, NONCE_SIZE, plaintext_peer_means=NO_KEY)
    return XSalsa20(key.secret, local), XSalsa20(key.secret, remote)


class GuardedConnection(IRawConnection):
    """A raw connection after the private-network handshake: writes and reads pass through
    the XSalsa20 ciphers (if any), and the peer's first plaintext bytes must be the
    multistream header, before ``deadline`` (trio time)."""

    def __init__(
        self,
        raw: IRawConnection,
        *,
        ciphers: tuple[XSalsa20, XSalsa20] | None,
        deadline: float,
        timeout_s: float,
    ) -> None:
        self._raw = raw
        self.is_initiator = raw.is_initiator
        self._write_cipher: XSalsa20 | None = ciphers[0] if ciphers else None
        self._read_cipher: XSalsa20 | None = ciphers[1] if ciphers else None
        self._deadline = deadline
        self._timeout_s = timeout_s
        self._checked = False
        self._ahead = b""  # plaintext read ahead, not yet handed out (from _ahead_at on)
        self._ahead_at = 0
        self.failure: PrivateNetworkRefused | None = None

    async def write(self, data: bytes) -> None:
        if self._write_cipher is not None:
            data = self._write_cipher.xor(data)
        await self._raw.write(data)

    async def read(self, n: int | None = None) -> bytes:
        if not self._checked:
            await self._check_first_bytes()
        if self._ahead:
            return self._take(n)
        # Read what the socket has, up to READ_AHEAD bytes, not just the ``n`` asked for:
        # Noise reads each frame as a 2-byte length and then its body, and a handoff is
        # many small frames; one read (one syscall and one cipher call) serves several.
        data = await self._raw.read(None if n is None else max(n, READ_AHEAD))
        if self._read_cipher is not None:
            data = self._read_cipher.xor(data)
        if n is None or len(data) <= n:
            return data
        self._ahead, self._ahead_at = data, 0
        return self._take(n)

    def _take(self, n: int | None) -> bytes:
        """Up to ``n`` bytes of what was read ahead."""
        start = self._ahead_at
        end = len(self._ahead) if n is None else min(len(self._ahead), start + n)
        out = self._ahead[start:end]
        if end == len(self._ahead):
            self._ahead, self._ahead_at = b"", 0
        else:
            self._ahead_at = end
        return out

    async def _check_first_bytes(self) -> None:
        keyed = self._read_cipher is not None
        want = len(MULTISTREAM_HEADER)
        try:
            with trio.move_on_at(self._deadline):
                raw = await _read_exactly(self._raw, want, plaintext_peer_means=None)
                self._ahead = self._read_cipher.xor(raw) if self._read_cipher else raw
                self._ahead_at = 0
                self._checked = True
            if not self._checked:
                raise PrivateNetworkRefused(silent(self._timeout_s))
            if self._ahead != MULTISTREAM_HEADER:
                raise PrivateNetworkRefused(OTHER_KEY if keyed else KEYED_PEER)
        except PrivateNetworkRefused as refusal:
            self._checked = False
            self._ahead = b""
            self.failure = refusal
            raise

    async def close(self) -> None:
        await self._raw.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        return self._raw.get_remote_address()

    def get_transport_addresses(self) -> list[Multiaddr]:
        return self._raw.get_transport_addresses()

    def get_connection_type(self) -> Any:
        return self._raw.get_connection_type()


async def protect(
    raw: IRawConnection,
    swarm_key: SwarmKey | None,
    *,
    timeout_s: float,
    nonce: bytes | None = None,
) -> GuardedConnection:
    """Run the private-network handshake on ``raw`` (none for an open swarm) and return the
    connection to secure. Its first read raises :class:`PrivateNetworkRefused` if the peer
    is not a member; the whole check ends within ``timeout_s``."""
    deadline = trio.current_time() + timeout_s
    ciphers = None
    if swarm_key is not None:
        with trio.move_on_at(deadline):
            ciphers = await exchange_nonces(raw, swarm_key, nonce=nonce)
        if ciphers is None:
            raise PrivateNetworkRefused(silent(timeout_s))
    return GuardedConnection(raw, ciphers=ciphers, deadline=deadline, timeout_s=timeout_s)


class RefusalLog:
    """Warnings about refused inbound connections, at most ``burst`` per ``window_s``
    (a stranger dialling in a loop must not flood the log); the rest are counted and the
    count is reported with the next warning."""

    def __init__(
        self,
        *,
        burst: int = 10,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
    ) -> None:
        self._burst = burst
        self._window_s = window_s
        self._clock = clock
        self._log = logger
        self._window_start = -float("inf")
        self._in_window = 0
        self._suppressed = 0

    def refused(self, remote: str, reason: str) -> None:
        now = self._clock()
        if now - self._window_start >= self._window_s:
            self._window_start, self._in_window = now, 0
        if self._in_window >= self._burst:
            self._suppressed += 1
            return
        self._in_window += 1
        more = ""
        if self._suppressed:
            more = f" ({self._suppressed} more refused connections were not logged)"
            self._suppressed = 0
        self._log.warning(
            "refused connection from %s: it did not complete the private-network handshake "
            "(not a member of this swarm: %s)%s",
            remote,
            reason,
            more,
        )


class PrivateNetworkUpgrader(TransportUpgrader):
    """py-libp2p's transport upgrader with the private-network layer in front of the
    security handshake, inbound and outbound. ``swarm_key=None``: an open swarm (only the
    first-bytes check, which lets this node tell a keyed peer why it cannot connect)."""

    def __init__(
        self,
        secure_transports: TSecurityOptions,
        muxer_transports: TMuxerOptions,
        *,
        swarm_key: SwarmKey | None,
        handshake_timeout_s: float,
        refusal_log: RefusalLog | None = None,
        max_remembered: int = 256,
        admit: Callable[[str], bool] | None = None,
    ) -> None:
        super().__init__(secure_transports, muxer_transports)
        # asked of every inbound peer once its identity is proven (a banned peer: False)
        self._admit = admit
        self.swarm_key = swarm_key
        self.handshake_timeout_s = handshake_timeout_s
        self._refusal_log = refusal_log or RefusalLog()
        self._max_remembered = max_remembered
        # peer id -> (time.monotonic(), reason) of the last outbound refusal, so that a
        # dial's caller can say why it failed (libp2p wraps the cause in its own errors)
        self._outbound_refusals: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def upgrade_security(
        self, raw_conn: IRawConnection, is_initiator: bool, peer_id: ID | None = None
    ) -> ISecureConn:
        try:
            conn = await protect(raw_conn, self.swarm_key, timeout_s=self.handshake_timeout_s)
            try:
                secured = await super().upgrade_security(conn, is_initiator, peer_id)
            except Exception:
                # the check fails inside multistream-select, which wraps errors in its own
                if conn.failure is not None:
                    raise conn.failure from None
                raise
        except PrivateNetworkRefused as refusal:
            if is_initiator:
                self._remember(peer_id, refusal.reason)
                log.debug("dial to %s refused: %s", peer_id, refusal.reason)
            else:
                self._refusal_log.refused(_remote(raw_conn), refusal.reason)
            raise
        if not is_initiator and self._admit is not None:
            remote = str(secured.get_remote_peer())
            if not self._admit(remote):
                try:
                    await secured.close()
                except Exception:
                    log.debug("close of a refused connection failed", exc_info=True)
                raise PeerRefused(f"peer {remote} is refused for now (banned)")
        return secured

    def _remember(self, peer_id: ID | None, reason: str) -> None:
        if peer_id is None:
            return
        key = str(peer_id)
        self._outbound_refusals.pop(key, None)
        self._outbound_refusals[key] = (time.monotonic(), reason)
        while len(self._outbound_refusals) > self._max_remembered:
            self._outbound_refusals.popitem(last=False)

    def refusal_since(self, peer_id: str, since: float) -> str | None:
        """The reason an outbound handshake with ``peer_id`` failed at or after ``since``
        (``time.monotonic()``), if it did."""
        entry = self._outbound_refusals.get(peer_id)
        return entry[1] if entry is not None and entry[0] >= since else None

    def forget(self, peer_id: str) -> None:
        self._outbound_refusals.pop(peer_id, None)


def _remote(raw_conn: IRawConnection) -> str:
    try:
        addr = raw_conn.get_remote_address()
    except Exception:
        addr = None
    if not addr:
        return "an unknown address"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
