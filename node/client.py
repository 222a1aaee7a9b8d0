"""A control-protocol client: what the CLI uses to talk to a node."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
from libp2p.crypto.keys import KeyPair

from node.config import load_config
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
from node.p2p import P2PHost, split_p2p_addr
from node.p2p.pnet import KEYED_PEER, NO_KEY
from node.swarmkey import SwarmKey
from protocols import control
from protocols.errors import PeerErrorResponse, ProtocolError, ProtocolTimeoutError
from protocols.stream import MessageStream

log = logging.getLogger(__name__)
T = TypeVar("T")

# a watch with no frame for this long is dead: a node heartbeats at most every 60 s
WATCH_IDLE_S = 130.0
WATCH_RECONNECTS = 5


def resolve_node_addr(home: Home, node: str | None) -> str:
    """The node to talk to: ``--node`` if given, else the node running from ``home``."""
    if node:
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

    async def one(host: P2PHost, peer_id: str) -> Any:
        return await ask(host, peer_id, message, timeout_s)

    return await session(key, node_addr, one, swarm_key=swarm_key, dial_timeout_s=dial_timeout_s)


async def session(
    key: KeyPair,
    node_addr: str,
    work: Callable[[P2PHost, str], Awaitable[T]],
    *,
    swarm_key: SwarmKey | None = None,
    dial_timeout_s: float = 5.0,
) -> T:
    """Run ``work(host, peer_id)`` with a client host connected to the node."""
    host = P2PHost(
        key,
        swarm_key=swarm_key,
        dial_timeout_s=dial_timeout_s,
        shutdown_timeout_s=2.0,
        graceful_shutdown=False,  # the answer is in: close the connection, do not linger
    )
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


async def ask(host: P2PHost, peer_id: str, message: Any, timeout_s: float | None) -> Any:
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
    host: P2PHost,
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
    config = load_config(config_file=home.config_file)
    if config.swarm.open:
        return SwarmMembership(None, None)
    path = home.swarm_key_path(config.swarm)
    if config.swarm.key_file is not None or path.exists():
        return SwarmMembership(SwarmKey.load(path), path)
    return SwarmMembership(None, None)


def explain_refusal(addr: str, reason: str, swarm: SwarmMembership) -> str:
    """One line for a user whose command reached a node of another swarm."""
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


def call(
    home: Home,
    node: str | None,
    message: Any,
    *,
    timeout_s: float | None = 30.0,
    swarm_key_file: Path | None = None,
) -> Any:
    """Synchronous wrapper for the CLI."""

    async def one(host: P2PHost, peer_id: str) -> Any:
        return await ask(host, peer_id, message, timeout_s)

    return run(home, node, one, swarm_key_file=swarm_key_file)


def run(
    home: Home,
    node: str | None,
    work: Callable[[P2PHost, str], Awaitable[T]],
    *,
    swarm_key_file: Path | None = None,
) -> T:
    """Run ``work(host, peer_id)`` against the node (``--node``, or the home's), for the CLI."""
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
