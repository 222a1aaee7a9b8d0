"""The libp2p host configured the hivemesh way, with the fixes from LIBP2P_NOTES.md:

* Noise only and yamux only (a default host also accepts plaintext and mplex);
* ``max_connections_per_peer=1`` (otherwise every dial waits an extra 250 ms);
* every stream handler wrapped: an exception is logged and the stream reset, never
  allowed to escape into ``host.run()`` (which would tear the host down);
* handlers are registered before anything dials, services start before dialling;
* on shutdown all peers are disconnected concurrently, then ``close()``, under a timeout;
* every dial and stream open has a timeout; EOF is reported distinctly from a final message;
* a dial is one attempt per address, at exactly that address (py-libp2p's own retries would
  repeat a refused private-network handshake three times, it would dial the first address in
  its peerstore instead, and it blocks a peer for 60 s after a failed dial: a peer that
  restarted, or moved to a new port, would stay unreachable); callers decide when to dial
  again;
* the private-network layer (:mod:`node.p2p.pnet`) in front of Noise when a swarm key is
  given, and QUIC refused then (py-libp2p's QUIC bypasses it);
* TCP listen sockets bound by hivemesh without ``SO_REUSEPORT`` (:mod:`node.p2p.listen`),
  before libp2p starts: a port in use is an error naming it, never a shared port;
* an inbound connection's slot of libp2p's inbound limit is given back when that
  connection closes (:mod:`node.p2p.inbound`), not when the swarm stops;
* a disconnect closes each of the peer's connections itself (libp2p's ``close_peer`` then
  forgets a connection made to the same peer meanwhile);
* what peers may hold of this node at once (inbound streams, bytes of unfinished frames)
  is bounded per peer and in total, and a peer that keeps breaking limits is banned
  (:mod:`node.p2p.guard`).
* streams we open are negotiated lazily (the protocol proposal goes out with the first
  message), streams peers open are answered with our first message
  (:mod:`node.p2p.negotiate`), a stream's SYN and ACK ride on its first frames
  (:mod:`node.p2p.yamux_frames`), and yamux window updates are sent as go-yamux sends them
  (:mod:`node.p2p.yamux_window`), not after every read.

libp2p exceptions are translated here into :mod:`protocols.errors` / :mod:`node.errors`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, cast

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.protocol_muxer.multiselect import DEFAULT_NEGOTIATE_TIMEOUT
from libp2p.protocol_muxer.multiselect import MULTISELECT_PROTOCOL_ID as MULTISTREAM_PROTOCOL_ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.utils.varint import encode_delim

from node.errors import ConfigError, NodeUnreachableError, NotInSwarmError
from node.p2p import inbound
from node.p2p.guard import GuardLimits, PeerGuard, StreamAccount
from node.p2p.lean_locks import use_lean_locks
from node.p2p.listen import ListenSockets
from node.p2p.negotiate import Negotiated, NegotiationError, negotiate
from node.p2p.pnet import PrivateNetworkUpgrader, RefusalLog
from node.p2p.tcp import ExclusiveTCP
from node.p2p.yamux_frames import use_deferred_syn_ack
from node.p2p.yamux_window import use_go_yamux_window_updates
from node.swarmkey import SwarmKey
from protocols._logsafe import logsafe
from protocols.errors import PeerOverLimitError, ProtocolRefusedError, StreamClosedError

log = logging.getLogger(__name__)

# how long a stream being reset may take to send what it still owes first (the multistream
# answer, the end of what it wrote)
WRITES_BEFORE_RESET_S = 0.5


@dataclass(frozen=True)
class ConnectionInfo:
    """The connection a stream runs on: the remote end's IP and TCP port, and whether this
    node dialled it (outbound: the peer id was proven at exactly that address)."""

    ip: str
    port: int
    outbound: bool


class P2PStream:
    """A libp2p stream seen as a :class:`protocols.stream.ByteStream`.

    A stream we open is negotiated lazily (see :meth:`P2PHost.open_stream`): ``proposal`` is
    the multistream-select header and protocol line, sent with our first write, and the
    peer's echo of it is checked before our first read returns anything.

    ``account``: for a stream a peer opened, its share of the peer's limits (what it reads
    is metered; garbage reported by its MessageStream is a strike). ``negotiated``: for such
    a stream, what :func:`node.p2p.negotiate.negotiate` read past the proposal (read first)
    and the answer it left unsent (it goes out with our first write, or before a read that
    has to wait for the peer, or at close or reset)."""

    def __init__(
        self,
        stream: INetStream,
        proposal: bytes | None = None,
        *,
        account: StreamAccount | None = None,
        negotiated: Negotiated | None = None,
    ) -> None:
        self._stream = stream
        self.remote_peer = str(stream.muxed_conn.peer_id)
        self._unsent = proposal  # not yet written
        self._unechoed = proposal  # not yet confirmed by the peer
        self._account = account
        self._leftover = b""  # read with the proposal, not yet returned
        self._answer_unsent = False  # our multistream answer is in _unsent
        self._wrote = False  # (and not closed: close() clears it)
        if negotiated is not None:
            self._leftover = negotiated.leftover
            self._unsent = negotiated.unsent
            self._answer_unsent = negotiated.unsent is not None

    def connection(self) -> ConnectionInfo | None:
        """The connection's remote endpoint and direction (None if libp2p does not know)."""
        try:
            remote = self._stream.get_remote_address()
            direction = getattr(getattr(self._stream, "swarm_conn", None), "direction", None)
        except Exception:  # foreign internals: no answer is an answer
            return None
        if not remote:
            return None
        return ConnectionInfo(str(remote[0]), int(remote[1]), str(direction) == "outbound")

    async def read(self, n: int) -> bytes:
        if self._leftover:
            data, self._leftover = self._leftover[:n], self._leftover[n:]
            if self._account is not None:
                self._account.received(data)  # PeerOverLimitError
            return data
        if self._unsent is not None:
            await self.write(b"")
        negotiating = self._unechoed is not None
        try:
            if negotiating:
                await self._check_echo()
            data = await self._stream.read(n)
        except StreamEOF:
            return b""
        except StreamClosedError:
            raise
        except Exception as exc:
            if negotiating and self._unechoed is not None:
                # reset before it echoed the protocol: a peer that refuses a protocol may
                # reset the stream as soon as it has said so (the first message, sent with
                # the proposal, reads to it as another proposal), before ``na`` is read here
                raise ProtocolRefusedError(
                    f"peer {self.remote_peer} reset the stream while the protocol "
                    f"({self._stream.get_protocol()}) was being negotiated: it does not speak "
                    "it, or it is shutting down"
                ) from None
            raise StreamClosedError(f"stream from {self.remote_peer} broke: {exc!r}") from None
        if self._account is not None and data:
            self._account.received(data)  # PeerOverLimitError
        return data

    def peer_fault(self, error: Exception) -> None:
        """The peer sent garbage on this stream (protocols.stream.ReportsPeerFaults)."""
        if self._account is not None:
            self._account.fault(error)

    async def _check_echo(self) -> None:
        expected = self._unechoed
        assert expected is not None
        got = b""
        while len(got) < len(expected):
            chunk = await self._stream.read(len(expected) - len(got))
            if not chunk or not expected.startswith(got + chunk):
                problem = "closed the stream" if not chunk else "refused it"
                protocol = self._stream.get_protocol()
                error = StreamClosedError if not chunk else ProtocolRefusedError
                raise error(
                    f"peer {self.remote_peer} {problem} while the protocol ({protocol}) "
                    "was being negotiated: it does not speak it, or it is shutting down"
                )
            got += chunk
        self._unechoed = None

    async def write(self, data: bytes) -> None:
        if self._unsent is not None:
            data, self._unsent = self._unsent + data, None
            self._answer_unsent = False
        self._wrote = self._wrote or bool(data)
        try:
            await self._stream.write(data)
        except Exception as exc:
            raise StreamClosedError(f"stream to {self.remote_peer} broke: {exc!r}") from None

    async def close(self) -> None:
        try:
            if self._unsent is not None:
                await self.write(b"")
            self._wrote = False  # (our side is over: a reset after it need not end it)
            await self._stream.close()
        except Exception:
            log.debug("close of stream to %s failed", self.remote_peer, exc_info=True)

    async def reset(self) -> None:
        try:
            with trio.move_on_after(WRITES_BEFORE_RESET_S):
                if self._answer_unsent:
                    # the peer learns that its protocol was accepted (a stream reset before
                    # that reads to it as a refused protocol)
                    await self.write(b"")
                if self._wrote:
                    # end our side first: a yamux reader that sees the reset before it has
                    # read what we wrote (an ``error`` frame, said just before) discards it,
                    # one that has seen our end first reads it
                    await self._stream.close()
        except Exception:
            pass  # the stream is being reset anyway
        try:
            await self._stream.reset()
        except Exception:
            log.debug("reset of stream to %s failed", self.remote_peer, exc_info=True)


StreamHandler = Callable[[P2PStream], Awaitable[None]]
ConnectionListener = Callable[[str, bool], None]


class _Notifee(INotifee):
    def __init__(self, listener: ConnectionListener) -> None:
        self._listener = listener

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._notify(conn, True)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._notify(conn, False)

    async def listen(self, network: INetwork, multiaddr: Any) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Any) -> None:
        pass

    def _notify(self, conn: INetConn, up: bool) -> None:
        try:
            self._listener(str(conn.muxed_conn.peer_id), up)
        except Exception:
            log.exception("connection listener failed")


def _known_noop_stream_callbacks() -> frozenset[Any]:
    """The stream callbacks of notifees that do nothing with streams: ours, and py-libp2p
    0.8.1's tag store and identify notifees (their docstrings say so)."""
    classes: list[Any] = [_Notifee]
    try:
        from libp2p.host import basic_host
        from libp2p.network.tag_store import TagStoreNotifee

        classes.append(TagStoreNotifee)
        identify = getattr(basic_host, "_IdentifyNotifee", None)
        if identify is not None:
            classes.append(identify)
    except ImportError:  # another py-libp2p: every notifee is called, as libp2p does
        pass
    return frozenset(
        getattr(cls, method) for cls in classes for method in ("opened_stream", "closed_stream")
    )


def _skip_noop_stream_notifications(swarm: Swarm) -> None:
    """py-libp2p tells every notifee of every stream opened and closed, each in a task of a
    nursery of its own: a dozen trio task steps per handoff on each node, for notifees that
    all do nothing with streams. Stream events now reach only notifees whose callbacks are not
    known to do nothing (none, today); connection events reach all, as before."""
    notify = swarm._notify
    noop = _known_noop_stream_callbacks()

    async def selective(method: str, *args: Any) -> None:
        if method in ("opened_stream", "closed_stream") and all(
            getattr(type(n), method, None) in noop for n in swarm.notifees
        ):
            return
        await notify(method, *args)

    swarm._notify = selective  # type: ignore[method-assign]


def quiet_libp2p_logging(level: int = logging.CRITICAL) -> None:
    """Set py-libp2p's loggers to ``level``.

    py-libp2p logs expected events (a peer going away, a refused handshake) as errors, and
    ``import libp2p`` resets its loggers, so this is called after libp2p is imported."""
    for name in ("libp2p", "multiaddr", "async_service"):
        logging.getLogger(name).setLevel(level)


@functools.lru_cache(maxsize=4096)
def parse_peer_id(peer_id: str) -> ID:
    """``ID.from_base58``, remembered: base58 decoding is pure Python (a division per byte),
    and a handoff needs the same few peer ids several times. Raises ValueError (a failure
    is not remembered)."""
    try:
        return ID.from_base58(peer_id)
    except Exception as exc:
        raise ValueError(f"invalid peer id {peer_id!r}: {exc}") from None


def valid_peer_id(peer_id: str) -> bool:
    try:
        parse_peer_id(peer_id)
    except ValueError:
        return False
    return True


def split_p2p_addr(addr: str) -> tuple[str, str]:
    """``/ip4/../tcp/../p2p/<id>`` → (peer id, full address). Raises ValueError."""
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:
        raise ValueError(f"invalid peer address {addr!r}: {exc}") from None
    return str(info.peer_id), addr


class _NoAutoConnector(AutoConnector):
    """libp2p's auto-connector, switched off: it would dial every peer that ever entered the
    peerstore (a peer exchange can put anyone there) whenever the node has fewer than its
    target of connections (200), on its own schedule and per peer id."""

    async def run_background_task(self, nursery: trio.Nursery) -> None:
        return None

    async def maybe_connect(self) -> None:
        return None


def uses_quic(addr: str) -> bool:
    """Whether a multiaddr is a QUIC address."""
    return any(part in ("quic", "quic-v1") for part in addr.split("/"))


class P2PHost:
    """A libp2p host configured the hivemesh way.

    ``swarm_key``: the private swarm this host belongs to (``None``: an open swarm). A peer
    without the same key cannot complete a connection in either direction; the handshake
    is bounded by ``handshake_timeout_s``."""

    def __init__(
        self,
        key_pair: KeyPair,
        *,
        swarm_key: SwarmKey | None = None,
        handshake_timeout_s: float = 1.5,
        dial_timeout_s: float = 5.0,
        shutdown_timeout_s: float = 5.0,
        refusal_log: RefusalLog | None = None,
        guard: GuardLimits | None = None,
    ) -> None:
        # half the frames of a handoff were py-libp2p's window updates (node.p2p.yamux_window),
        # two more its lone SYN and ACK (node.p2p.yamux_frames)
        use_go_yamux_window_updates()
        use_deferred_syn_ack()
        # and five scheduler round trips per message written, three of them free locks
        use_lean_locks()
        # what peers may hold of this node, and who is banned (node/p2p/guard.py)
        self.guard = PeerGuard(guard or GuardLimits(), on_ban=self._banned)
        self._inbound_streams: dict[str, list[INetStream]] = {}
        self._nursery: trio.Nursery | None = None
        noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
        sec_opt = {NOISE_PROTOCOL_ID: noise}
        # yamux only: libp2p's yamux option also offers mplex (no flow control)
        muxer_opt = {TProtocol(YAMUX_PROTOCOL_ID): Yamux}
        # TCP only, with listen sockets bound by us: py-libp2p's own sets SO_REUSEPORT
        self._tcp = ExclusiveTCP()
        self._host = new_host(
            key_pair=key_pair,
            sec_opt=sec_opt,
            muxer_opt=muxer_opt,
            transports=[self._tcp],
            connection_config=ConnectionConfig(
                max_connections_per_peer=1, dial_timeout=dial_timeout_s
            ),
        )
        swarm = self._host.get_network()
        if not isinstance(swarm, Swarm):  # new_host always builds a Swarm in 0.8.1
            raise TypeError(f"unexpected libp2p network {type(swarm).__name__}")
        # The private-network layer goes where py-libp2p secures raw connections (both
        # directions, and the responder side of hole punching); its own psk stays unset.
        self._upgrader = PrivateNetworkUpgrader(
            sec_opt,
            muxer_opt,
            swarm_key=swarm_key,
            handshake_timeout_s=handshake_timeout_s,
            refusal_log=refusal_log,
            admit=self._admit_connection,
        )
        swarm.upgrader = self._upgrader
        # hivemesh's discovery decides whom to dial, and backs off per address; libp2p must
        # not dial on its own: its swarm retries every failed dial 3 times (4 connection
        # attempts each, and a refused handshake logged four times) and its auto-connector
        # redials every peer in the peerstore
        swarm.retry_config = RetryConfig(max_retries=0)
        swarm.auto_connector = _NoAutoConnector(swarm)
        # an inbound connection holds its slot of libp2p's inbound limit (250) while it
        # lives, not for the swarm's lifetime (the node went deaf after 250 connections)
        self.inbound = inbound.InboundConnections(swarm._inbound_limiter)
        inbound.install(swarm, self.inbound)
        # every inbound stream is counted from the moment yamux hands it over
        # (and negotiated by node.p2p.negotiate, not by libp2p's own listener)
        swarm.common_stream_handler = self._guarded_streams()
        _skip_noop_stream_notifications(swarm)
        self._handlers: dict[str, Callable[[INetStream, Negotiated], Awaitable[None]]] = {}
        self._swarm = swarm
        # how long a peer may take to propose a protocol on a new stream (libp2p's listener:
        # the connection config's inbound negotiation timeout, 10 s)
        timeout_s = float(
            getattr(swarm.connection_config, "inbound_stream_protocol_negotiation_timeout", 0)
        )
        if timeout_s <= 0:
            timeout_s = float(getattr(self._host, "negotiate_timeout", DEFAULT_NEGOTIATE_TIMEOUT))
        self._negotiate_timeout_s = timeout_s
        self.swarm_key = swarm_key
        self.peer_id = str(self._host.get_id())
        self.dial_timeout_s = dial_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self._running = False

    # -- setup ---------------------------------------------------------------------------

    def set_handler(
        self, protocol: str, handler: StreamHandler, *, timeout_s: float | None = None
    ) -> None:
        """Register ``handler``; it may not raise into libp2p and is bounded by ``timeout_s``."""
        if self._running:
            raise RuntimeError("register handlers before the host runs")

        async def wrapped(stream: INetStream, negotiated: Negotiated | None = None) -> None:
            account = StreamAccount(self.guard, str(stream.muxed_conn.peer_id))
            s = P2PStream(stream, account=account, negotiated=negotiated)
            try:
                with trio.fail_after(timeout_s) if timeout_s else _nullcontext():
                    await handler(s)
            except trio.TooSlowError:
                log.warning("%s handler for %s timed out", protocol, s.remote_peer)
                await s.reset()
            except PeerOverLimitError as exc:  # raised by a read outside the handler's care
                log.info("%s stream of %s reset: %s", protocol, s.remote_peer, exc)
                await s.reset()
            except Exception:
                log.exception("%s handler for %s failed", protocol, s.remote_peer)
                await s.reset()
            finally:
                account.close()

        self._handlers[protocol] = wrapped
        self._host.set_stream_handler(TProtocol(protocol), wrapped)

    def _guarded_streams(self) -> Callable[[INetStream], Awaitable[None]]:
        """The handler of every inbound stream (it negotiates the protocol, then calls the
        protocol's handler), behind :meth:`PeerGuard.open_stream`: a stream over a limit is
        reset before anything is read from it."""

        async def guarded(stream: INetStream) -> None:
            peer = str(stream.muxed_conn.peer_id)
            admission = self.guard.open_stream(peer)
            if not admission.admitted:
                log.debug("stream of %s refused: %s", peer, admission.reason)
                await _reset_quietly(stream)
                return
            if admission.evict is not None:
                self._evict_one_stream(admission.evict)
            held = self._inbound_streams.setdefault(peer, [])
            held.append(stream)
            try:
                await self._negotiate_and_handle(stream)
            finally:
                held.remove(stream)
                if not held and self._inbound_streams.get(peer) is held:
                    del self._inbound_streams[peer]
                self.guard.close_stream(peer)

        return guarded

    async def _negotiate_and_handle(self, stream: INetStream) -> None:
        """Agree on the stream's protocol (:mod:`node.p2p.negotiate`: in one read, the
        answer sent with the handler's first message), then run its handler: ours, or one
        of libp2p's own (identify, ping), which are given the answer at once."""
        table = self._host.get_mux().handlers
        try:
            agreed = await negotiate(
                stream, [p for p in table if p is not None], timeout_s=self._negotiate_timeout_s
            )
        except NegotiationError as exc:
            log.debug("stream of %s refused: %s", stream.muxed_conn.peer_id, exc)
            agreed = None
        except Exception as exc:  # the stream broke: a reset, an EOF, a closed connection
            log.debug("stream of %s broke while negotiating: %r", stream.muxed_conn.peer_id, exc)
            agreed = None
        if agreed is None:
            await _reset_quietly(stream)
            return
        stream.set_protocol(TProtocol(agreed.protocol))
        ours = self._handlers.get(agreed.protocol)
        if ours is not None:
            await ours(stream, agreed)
            return
        handler = table.get(TProtocol(agreed.protocol))
        if handler is None:
            await _reset_quietly(stream)
            return
        try:
            if agreed.unsent is not None:
                await stream.write(agreed.unsent)
        except Exception:
            await _reset_quietly(stream)
            return
        replayed = cast(INetStream, _Replayed(stream, agreed.leftover))
        await handler(replayed if agreed.leftover else stream)

    def _evict_one_stream(self, peer: str) -> None:
        """Reset the newest stream of ``peer`` (the node holds the most streams of it) to
        make room for a peer holding fewer; its count drops when its handler ends."""
        held = self._inbound_streams.get(peer)
        if held and self._nursery is not None:
            self._nursery.start_soon(_reset_quietly, held[-1])

    async def _watch_muxer_buffers(self, every_s: float = 0.25) -> None:
        """Close the connections of peers whose unread bytes in the muxer are over the
        limits (yamux in py-libp2p 0.8.1 logs a peer that exceeds its receive window, and
        buffers what it sent anyway)."""
        swarm = self._host.get_network()
        while True:
            await trio.sleep(every_s)
            buffered: dict[str, int] = {}
            for pid, conns in list(swarm.connections.items()):
                for conn in conns:
                    buffers = getattr(conn.muxed_conn, "stream_buffers", None) or {}
                    held = sum(len(b) for b in list(buffers.values()))
                    if held:
                        buffered[str(pid)] = buffered.get(str(pid), 0) + held
            for peer, reason in self.guard.over_buffered(buffered):
                log.info("closing the connection of %s: %s", logsafe(peer), reason)
                if valid_peer_id(peer) and self._nursery is not None:
                    self._nursery.start_soon(self._disconnect_quietly, parse_peer_id(peer))

    def _banned(self, peer: str, reason: str) -> None:
        log.warning(
            "banned peer %s for %gs: %s", logsafe(peer), self.guard.limits.ban_s, logsafe(reason)
        )
        if self._nursery is not None and valid_peer_id(peer):
            self._nursery.start_soon(self._disconnect_quietly, parse_peer_id(peer))

    def _admit_connection(self, peer: str) -> bool:
        """Whether an inbound connection of ``peer`` (its identity just proven) may go on."""
        if self.guard.ban_of(peer) is None:
            return True
        ban = self.guard.refusal_to_log(peer)
        if ban is not None:
            left = max(0.0, ban.until - time.monotonic())
            log.warning(
                "refused connection from banned peer %s (%d refused; ban ends in %.0fs: %s)",
                logsafe(peer),
                ban.refused,
                left,
                logsafe(ban.reason),
            )
        return False

    def on_connection_change(self, listener: ConnectionListener) -> None:
        self._host.get_network().register_notifee(_Notifee(listener))

    @asynccontextmanager
    async def run(
        self, listen: list[str], *, sockets: ListenSockets | None = None
    ) -> AsyncIterator[None]:
        """Listen and serve while the ``async with`` body runs.

        TCP addresses are listened on with ``sockets`` (bound earlier by the caller, who
        keeps them; see :class:`ListenSockets`) or with sockets bound here, before libp2p
        starts: a port in use raises :class:`ListenError` naming the address.

        The libp2p host lives in its own task, shielded from the caller's cancellation:
        when the body ends (or is cancelled) the host first disconnects every peer and closes,
        under ``shutdown_timeout_s``, instead of having its connection tasks cancelled under
        it (which leaves peers believing we are still there)."""
        if self.swarm_key is not None:
            quic = [a for a in listen if uses_quic(a)]
            if quic:
                raise ConfigError(
                    f"cannot listen on {quic[0]} in a private swarm: py-libp2p's QUIC skips "
                    "the swarm key; listen on a /tcp address"
                )
        own_sockets = ListenSockets.bind(listen) if sockets is None else None
        self._tcp.sockets = sockets if sockets is not None else own_sockets
        try:
            async with self._serve(listen):
                yield
        finally:
            if own_sockets is not None:
                own_sockets.close()

    @asynccontextmanager
    async def _serve(self, listen: list[str]) -> AsyncIterator[None]:
        addrs = [multiaddr.Multiaddr(a) for a in listen]
        self._running = True
        stop = trio.Event()

        async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with trio.CancelScope(shield=True) as shield:
                async with self._host.run(addrs):
                    task_status.started()
                    await stop.wait()
                    shield.deadline = trio.current_time() + self.shutdown_timeout_s + 1
                    await self._shutdown()

        async def watch() -> None:
            with watching:
                await self._watch_muxer_buffers()

        watching = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            await nursery.start(serve)
            self._nursery = nursery
            nursery.start_soon(watch)
            try:
                yield
            finally:
                self._nursery = None
                watching.cancel()
                stop.set()

    async def _shutdown(self) -> None:
        with trio.move_on_after(self.shutdown_timeout_s) as scope:
            async with trio.open_nursery() as nursery:
                for peer in list(self._host.get_connected_peers()):
                    nursery.start_soon(self._disconnect_quietly, peer)
            await self._host.close()
        if scope.cancelled_caught:
            log.warning("libp2p shutdown took over %ss; abandoned", self.shutdown_timeout_s)

    async def _disconnect_quietly(self, peer: ID) -> None:
        # Each connection closed by itself, not libp2p's host.disconnect (swarm.close_peer):
        # after its closes (0.1 s each) that drops the peer's whole entry from the
        # connection table, and with it a connection made to the same peer meanwhile,
        # which then lives on untracked.
        for conn in list(self._host.get_network().get_connections(peer)):
            try:
                await conn.close()
            except Exception:
                log.debug("disconnect from %s failed", peer, exc_info=True)

    # -- queries -------------------------------------------------------------------------

    def addrs(self) -> list[str]:
        """Our listen addresses, each ending in ``/p2p/<peer id>``."""
        return [str(a) for a in self._host.get_addrs()]

    def transport_addrs(self) -> list[str]:
        suffix = f"/p2p/{self.peer_id}"
        return [a[: -len(suffix)] if a.endswith(suffix) else a for a in self.addrs()]

    def connected_peers(self) -> set[str]:
        return {str(p) for p in self._host.get_connected_peers()}

    def is_connected(self, peer_id: str) -> bool:
        try:
            return parse_peer_id(peer_id) in self._swarm.connections
        except ValueError:
            return False

    # -- actions -------------------------------------------------------------------------

    async def connect(self, peer_id: str, addrs: list[str]) -> None:
        """Dial ``peer_id`` at any of ``addrs`` (tried one by one)."""
        if peer_id == self.peer_id:
            raise NodeUnreachableError("refusing to dial ourselves")
        if self.is_connected(peer_id):
            return
        ban = self.guard.ban_of(peer_id)
        if ban is not None:
            raise NodeUnreachableError(
                f"peer {peer_id} is banned for {ban.until - time.monotonic():.0f}s more: "
                f"{logsafe(ban.reason)}"
            )
        try:
            pid = ID.from_base58(peer_id)
        except Exception:
            raise NodeUnreachableError(f"invalid peer id {peer_id!r}") from None
        errors = []
        refusal: str | None = None
        for addr in addrs:
            base = addr.split("/p2p/")[0]
            if self.swarm_key is not None and uses_quic(base):
                errors.append(f"{base}: QUIC is not used in a private swarm")
                continue
            started = time.monotonic()
            # This address, now: libp2p dials the addresses its peerstore holds for the peer
            # (the first TCP one only, LIBP2P_NOTES 21), so a dead address tried earlier (an
            # old port) would be dialled instead of this one; and it blocks a peer for 60 s
            # after a failed dial ("negative cache"), which would refuse this address without
            # a dial. hivemesh decides when to dial again (discovery backs off per address).
            self._host.get_peerstore().clear_addrs(pid)
            self._swarm.unblock_peer(pid)
            try:
                info = PeerInfo(pid, [multiaddr.Multiaddr(base)])
                with trio.fail_after(self.dial_timeout_s):
                    await self._host.connect(info)
            except trio.TooSlowError:
                errors.append(f"{base}: no answer within {self.dial_timeout_s:g}s")
                continue
            except Exception as exc:
                # a refused handshake is also remembered when libp2p's negative cache
                # answers a later dial without trying (for 60 s)
                since = started if "negative cache" not in str(exc) else started - 60.0
                refusal = self._upgrader.refusal_since(peer_id, since) or refusal
                errors.append(f"{base}: {_first_line(exc)}")
                continue
            if self.is_connected(peer_id):
                self._upgrader.forget(peer_id)
                return
            errors.append(f"{base}: connection dropped by the remote")
        if refusal is not None:
            raise NotInSwarmError(
                f"peer {peer_id} is not a member of this swarm: it did not complete the "
                f"private-network handshake ({refusal})",
                reason=refusal,
            )
        detail = "; ".join(errors) or "no addresses known"
        raise NodeUnreachableError(f"cannot reach peer {peer_id}: {detail}")

    async def connect_addr(self, addr: str) -> str:
        """Dial a full ``/.../p2p/<id>`` address; returns the peer id."""
        try:
            peer_id, _ = split_p2p_addr(addr)
        except ValueError as exc:
            raise NodeUnreachableError(str(exc)) from None
        await self.connect(peer_id, [addr])
        return peer_id

    async def open_stream(self, peer_id: str, protocol: str) -> P2PStream:
        """A new stream to ``peer_id`` speaking ``protocol``.

        The stream is negotiated lazily, as go-libp2p and js-libp2p do when they propose a
        single protocol: the multistream-select header and the protocol line go out with
        the stream's first message, and the peer's echo of both is checked before the first
        read returns (a peer that refuses the protocol makes that read raise
        :class:`StreamClosedError`). py-libp2p's own ``new_stream`` waits for the header's
        echo, then for the protocol's: two round trips and two more frames per stream, which
        made up a good part of a handoff's cost."""
        if not valid_peer_id(peer_id):
            raise NodeUnreachableError(f"invalid peer id {peer_id!r}")
        try:
            with trio.fail_after(self.dial_timeout_s):
                stream = await self._host.get_network().new_stream(parse_peer_id(peer_id))
        except trio.TooSlowError:
            raise NodeUnreachableError(
                f"peer {peer_id} did not open a {protocol} stream within {self.dial_timeout_s:g}s"
            ) from None
        except Exception as exc:
            raise NodeUnreachableError(
                f"cannot open {protocol} stream to {peer_id}: {_first_line(exc)}"
            ) from None
        stream.set_protocol(TProtocol(protocol))
        proposal = encode_delim(MULTISTREAM_PROTOCOL_ID.encode()) + encode_delim(protocol.encode())
        return P2PStream(stream, proposal)

    async def disconnect(self, peer_id: str) -> None:
        if valid_peer_id(peer_id):
            await self._disconnect_quietly(parse_peer_id(peer_id))


async def _reset_quietly(stream: INetStream) -> None:
    try:
        await stream.reset()
    except Exception:
        log.debug("reset of a refused stream failed", exc_info=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Replayed:
    """A libp2p stream whose first reads return ``data`` (read while negotiating)."""

    def __init__(self, stream: INetStream, data: bytes) -> None:
        self._stream = stream
        self._data = data

    async def read(self, n: int | None = None) -> bytes:
        if self._data:
            cut = len(self._data) if n is None else n
            data, self._data = self._data[:cut], self._data[cut:]
            return data
        return await self._stream.read(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
