"""A control-protocol client: what the CLI uses to talk to a node.

Two ways to a node: libp2p (any node: ``--node ADDR``, or the home's), and, for the node
running from the CLI's own home, its local control socket (node.control_socket: no Noise
handshake, no libp2p import). :func:`run` takes the socket when it can and libp2p
otherwise; ``HIVEMESH_CLIENT_VIA=libp2p`` forces libp2p, ``=socket`` the socket.

libp2p (and the config's models) are imported only on the libp2p path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from node.control_socket import LocalStream, socket_path
from node.errors import (
    NoAnswerError,
    NodeError,
    NodeUnreachableError,
    NotAuthorisedError,
    NotInSwarmError,
    RequestFailedError,
)
from node.home import Home, SwarmMembership
from node.home_lock import lock_holder, start_hint
from node.swarmkey import SwarmKey
from protocols import control
from protocols.errors import PeerErrorResponse, ProtocolError, ProtocolTimeoutError
from protocols.stream import ByteStream, MessageStream

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair


log = logging.getLogger(__name__)
T = TypeVar("T")

VIA_ENV = "HIVEMESH_CLIENT_VIA"
VIA_CHOICES = ("auto", "socket", "libp2p")


class ControlHost(Protocol):
    """What :func:`ask` and :func:`watch` need of the way to a node: a libp2p host
    (node.p2p.P2PHost) or the home's control socket (:class:`LocalControl`)."""

    async def open_stream(self, peer_id: str, protocol: str) -> ByteStream: ...

    def is_connected(self, peer_id: str) -> bool: ...


# a watch with no frame for this long is dead: a node heartbeats at most every 60 s
WATCH_IDLE_S = 130.0
WATCH_RECONNECTS = 5


def resolve_node_addr(home: Home, node: str | None) -> str:
    """The node to talk to: ``--node`` if given, else the node running from ``home``."""
    if node:
        from node.p2p import split_p2p_addr

        try:
            split_p2p_addr(node)
        except ValueError as exc:
            raise NodeUnreachableError(f"{exc} (expected /ip4/HOST/tcp/PORT/p2p/PEER_ID)") from None
        return node
    # Whether a node runs from the home is the lock's answer: a recorded pid may be dead,
    # or reused by an unrelated process.
    holder = lock_holder(home.path)
    if holder is None:
        raise NodeUnreachableError(
            f"no node running from {home.path} "
            f"(start one with '{start_hint(home.path)}', or pass --node)"
        )
    info = home.read_runtime()
    if not info or not info.get("addrs"):
        raise NodeUnreachableError(
            f"the node running from {home.path} (pid {holder or 'unknown'}) is still "
            "starting: try again when it has printed its addresses"
        )
    addrs = [a for a in info["addrs"] if "/ip4/127.0.0.1/" in a] or info["addrs"]
    return str(addrs[0])


async def request(
    key: KeyPair,
    node_addr: str,
    message: Any,
    *,
    swarm_key: SwarmKey | None = None,
    timeout_s: float | None = 30.0,
    dial_timeout_s: float = 5.0,
) -> Any:
    """Send one control request and return the response model.

    ``swarm_key``: the key of the node's swarm (None for an open swarm).
    ``timeout_s=None`` waits as long as the node keeps the stream open (``result --wait``).
    """

    async def one(host: ControlHost, peer_id: str) -> Any:
        return await ask(host, peer_id, message, timeout_s)

    return await session(key, node_addr, one, swarm_key=swarm_key, dial_timeout_s=dial_timeout_s)


async def session(
    key: KeyPair,
    node_addr: str,
    work: Callable[[ControlHost, str], Awaitable[T]],
    *,
    swarm_key: SwarmKey | None = None,
    dial_timeout_s: float = 5.0,
) -> T:
    """Run ``work(host, peer_id)`` with a client host connected to the node."""
    from node.p2p import P2PHost

    host = P2PHost(key, swarm_key=swarm_key, dial_timeout_s=dial_timeout_s, shutdown_timeout_s=2.0)
    reply: Any = None
    error: NodeError | None = None
    # Errors are carried out of host.run() by hand: raised inside, libp2p's nurseries
    # would wrap them in exception groups.
    async with host.run(["/ip4/127.0.0.1/tcp/0"]):
        try:
            peer_id = await host.connect_addr(node_addr)
            reply = await work(host, peer_id)
        except NodeError as exc:
            error = exc
    if error is not None:
        raise error
    return reply


async def ask(host: ControlHost, peer_id: str, message: Any, timeout_s: float | None) -> Any:
    """One request on a new stream; its response (``heartbeat`` frames are skipped)."""
    stream = await host.open_stream(peer_id, control.PROTOCOL_ID)
    ms = MessageStream(stream, control.RESPONSE_CODEC)
    try:
        await ms.send(message)
        while True:
            if timeout_s is None:
                reply = await ms.receive()
            else:
                reply = await ms.receive_within(timeout_s)
            if not isinstance(reply, control.Heartbeat):
                return reply
    except PeerErrorResponse as exc:
        raise _refused(exc) from None
    except ProtocolTimeoutError:
        raise NoAnswerError(f"node {peer_id} did not answer within {timeout_s:g}s") from None
    except ProtocolError as exc:  # (sent, or partly: the node may have acted on it)
        raise NoAnswerError(f"node {peer_id}: {exc}") from None
    finally:
        await ms.close()


def _refused(exc: PeerErrorResponse) -> NodeError:
    if exc.code == "unauthorised":
        return NotAuthorisedError(exc.message)
    return RequestFailedError(exc.code, exc.message)


async def watch(
    host: ControlHost,
    peer_id: str,
    workflow_id: str,
    on_frame: Callable[[Any], None],
    *,
    since: int = 0,
    idle_timeout_s: float = WATCH_IDLE_S,
    reconnects: int = WATCH_RECONNECTS,
) -> control.ProgressEvent:
    """Follow a workflow's events (``watch``, docs/protocols.md §10.8) until it ends; return
    its ``workflow_finished`` event. Every frame (``watching``, ``event``, ``heartbeat``) is
    given to ``on_frame``. A stream lost, or cut off as ``lagged``, is watched again from
    the last event seen, up to ``reconnects`` times in a row."""
    last = since
    tries = 0
    while True:
        stream = await host.open_stream(peer_id, control.PROTOCOL_ID)
        ms = MessageStream(stream, control.RESPONSE_CODEC)
        try:
            request: Any = control.WatchRequest(workflow_id=workflow_id, since=last)
            await ms.send(request)
            while True:
                frame = await ms.receive_within(idle_timeout_s)
                on_frame(frame)
                if isinstance(frame, control.Watching) and frame.reset:
                    last = 0
                elif isinstance(frame, control.ProgressEvent):
                    last, tries = frame.seq, 0
                    if frame.kind == "workflow_finished":
                        return frame
        except PeerErrorResponse as exc:
            if exc.code != "lagged" or tries >= reconnects:
                raise _refused(exc) from None
        except ProtocolTimeoutError:
            raise NoAnswerError(
                f"node {peer_id} sent nothing for {idle_timeout_s:g}s (no heartbeat)"
            ) from None
        except ProtocolError as exc:
            if tries >= reconnects:
                raise NoAnswerError(f"node {peer_id}: {exc}") from None
            log.info("watch of %s lost (%s); watching again from %d", workflow_id, exc, last)
        finally:
            await ms.close()
        tries += 1
        if not host.is_connected(peer_id):
            await trio.sleep(min(0.2 * 2**tries, 5.0))


def client_swarm(home: Home, node: str | None, swarm_key_file: Path | None) -> SwarmMembership:
    """The swarm key the CLI talks to a node with: ``--swarm-key`` if given; else, for the
    node running from ``home``, the key it runs with; else the home's own (per its config).
    A home without a key gives an open client (which a private node refuses, saying why)."""
    if swarm_key_file is not None:
        return SwarmMembership(SwarmKey.load(swarm_key_file), swarm_key_file)
    if node is None:
        info = home.read_runtime() or {}
        if "swarm_key_file" in info:
            recorded = info["swarm_key_file"]
            if recorded is None:
                return SwarmMembership(None, None)
            return SwarmMembership(SwarmKey.load(Path(recorded)), Path(recorded))
    from node.config import load_config

    config = load_config(config_file=home.config_file)
    if config.swarm.open:
        return SwarmMembership(None, None)
    path = home.swarm_key_path(config.swarm)
    if config.swarm.key_file is not None or path.exists():
        return SwarmMembership(SwarmKey.load(path), path)
    return SwarmMembership(None, None)


def explain_refusal(addr: str, reason: str, swarm: SwarmMembership) -> str:
    """One line for a user whose command reached a node of another swarm."""
    from node.p2p.pnet import KEYED_PEER, NO_KEY

    if swarm.key is None:
        what = (
            "is in a private swarm"
            if reason == KEYED_PEER
            else f"refused this client ({reason}); it may be in a private swarm"
        )
        return (
            f"the node at {addr} {what} and this client has no swarm key: "
            "pass --swarm-key FILE with the swarm.key of the node's swarm"
        )
    used = f"the swarm key {swarm.key_file} (fingerprint {swarm.key.fingerprint})"
    if reason == NO_KEY:
        return (
            f"the node at {addr} is in an open swarm (it has no swarm key) but this client "
            f"used {used}: use a home without a swarm key (--home DIR)"
        )
    return (
        f"the node at {addr} is in another swarm ({reason}); this client used {used}: "
        "pass --swarm-key FILE with the key of the node's swarm"
    )


# -- the local control socket -------------------------------------------------------------


class LocalControl:
    """The node of the CLI's home, reached on its control socket: a :class:`ControlHost`.

    Every :meth:`open_stream` is a new connection (one control stream each); the first one
    is made by :meth:`connect`, which is how a node that does not answer is told apart
    before anything is sent (the caller may then take libp2p instead)."""

    def __init__(self, path: Path, first: trio.SocketStream | None = None) -> None:
        self.path = path
        self._first = first

    @classmethod
    async def connect(cls, path: Path) -> LocalControl:
        """OSError if nobody accepts on ``path`` (no file, a stale file, not a socket)."""
        return cls(path, await trio.open_unix_socket(str(path)))

    async def open_stream(self, peer_id: str, protocol: str) -> ByteStream:
        if protocol != control.PROTOCOL_ID:  # (no negotiation: the node's own version)
            raise ValueError(f"the local control socket speaks {control.PROTOCOL_ID} only")
        first, self._first = self._first, None
        if first is not None:
            return LocalStream(first, peer_id)
        try:
            return LocalStream(await trio.open_unix_socket(str(self.path)), peer_id)
        except OSError as exc:
            raise NodeUnreachableError(
                f"the node's control socket {self.path} does not answer: {exc.strerror}"
            ) from None

    def is_connected(self, peer_id: str) -> bool:
        return self.path.exists()

    async def aclose(self) -> None:
        first, self._first = self._first, None
        if first is not None:
            await first.aclose()


def client_via() -> str:
    """``HIVEMESH_CLIENT_VIA``: ``auto`` (the default), ``socket`` or ``libp2p``."""
    via = os.environ.get(VIA_ENV, "auto").strip().lower() or "auto"
    if via not in VIA_CHOICES:
        raise NodeUnreachableError(f"{VIA_ENV}={via!r} is not one of {', '.join(VIA_CHOICES)}")
    return via


def local_socket(home: Home) -> tuple[Path, str] | None:
    """The control socket of the node running from ``home``, with its peer id, if that
    node serves one in this client's protocol version; else None (use libp2p)."""
    path = socket_path(home.path)
    if path is None:
        return None
    try:
        info = home.read_runtime()
    except NodeError:
        return None
    if not info or info.get("control_socket") != str(path):
        return None
    if info.get("control_protocol") != control.PROTOCOL_ID:
        return None  # another version: libp2p negotiates one both speak
    return path, str(info.get("peer_id") or "the local node")


class _SocketUnavailable(Exception):
    """Nobody accepted on the control socket: nothing was sent."""


async def local_session(
    path: Path, peer_id: str, work: Callable[[ControlHost, str], Awaitable[T]]
) -> T:
    """Run ``work(host, peer_id)`` over the control socket at ``path``."""
    try:
        local = await LocalControl.connect(path)
    except OSError as exc:
        raise _SocketUnavailable(exc.strerror or str(exc)) from None
    try:
        return await work(local, peer_id)
    finally:
        await local.aclose()


def call(
    home: Home,
    node: str | None,
    message: Any,
    *,
    timeout_s: float | None = 30.0,
    swarm_key_file: Path | None = None,
) -> Any:
    """Synchronous wrapper for the CLI."""

    async def one(host: ControlHost, peer_id: str) -> Any:
        return await ask(host, peer_id, message, timeout_s)

    return run(home, node, one, swarm_key_file=swarm_key_file)


def run(
    home: Home,
    node: str | None,
    work: Callable[[ControlHost, str], Awaitable[T]],
    *,
    swarm_key_file: Path | None = None,
) -> T:
    """Run ``work(host, peer_id)`` against the node (``--node``, or the home's), for the CLI:
    the home's node on its control socket if it answers there (see :func:`client_via`),
    else over libp2p."""
    via = client_via()
    if node is None and via != "libp2p":
        local = local_socket(home)
        if local is not None:
            path, peer_id = local
            try:
                return trio.run(local_session, path, peer_id, work)
            except _SocketUnavailable as exc:
                if via == "socket":
                    raise NodeUnreachableError(
                        f"the node's control socket {path} does not answer ({exc})"
                    ) from None
                log.debug("control socket %s: %s; using libp2p", path, exc)
        elif via == "socket":
            raise NodeUnreachableError(
                f"no node serves a control socket in {home.path} "
                f"({VIA_ENV}=socket; unset it to use libp2p)"
            )
    elif via == "socket":
        raise NodeUnreachableError(f"--node is reached over libp2p only (unset {VIA_ENV})")
    return _run_libp2p(home, node, work, swarm_key_file=swarm_key_file)


def _run_libp2p(
    home: Home,
    node: str | None,
    work: Callable[[ControlHost, str], Awaitable[T]],
    *,
    swarm_key_file: Path | None = None,
) -> T:
    from node.p2p import quiet_libp2p_logging

    quiet_libp2p_logging()  # (again: importing libp2p resets its loggers)
    addr = resolve_node_addr(home, node)
    swarm = client_swarm(home, node, swarm_key_file)
    key = home.load_client_key(create=node is not None)
    try:
        return trio.run(lambda: session(key, addr, work, swarm_key=swarm.key))
    except BaseExceptionGroup as group:
        # Ctrl-C while libp2p's nurseries run arrives wrapped: the CLI handles it as itself
        if group.subgroup(KeyboardInterrupt) is not None:
            raise KeyboardInterrupt from None
        raise
    except NotInSwarmError as exc:
        raise NotInSwarmError(explain_refusal(addr, exc.reason, swarm), exc.reason) from None
