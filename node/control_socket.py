"""The local control endpoint: the control protocol over a Unix domain socket in the home.

A running node also listens on ``HOME/control.sock`` (mode 0600, in the home folder). On it
a connection is one control stream: the same framing, messages and handler as a libp2p
stream of ``/hivemesh/control/<version>`` (the node's current version; there is no protocol
negotiation), without the Noise handshake or the import of libp2p. The CLI uses it for the
node of its own home (node/client.py) and falls back to libp2p when it is absent.

Who may use it: the node's own uid only. The file mode keeps other users out; on Linux the
node also checks the connecting process's uid (``SO_PEERCRED``) and refuses another with the
control protocol's ``unauthorised`` error. A connection that is let in is the home's
client (the peer id of ``HOME/client.key``): what it owns and may do is what that key may.

Bounds, as for a peer's libp2p streams: connections open at once
(``network.max_streams_per_peer``), bytes of unfinished frames over all of them
(``network.max_pending_bytes_per_peer``), the frame limits, the request timeout, and a
write that the client does not take within ``network.request_timeout_s`` ends the
connection.

This module imports neither libp2p nor the node's services: the CLI's fast path uses it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from node.home import CONTROL_SOCKET
from protocols.errors import PeerOverLimitError, StreamClosedError
from protocols.framing import FrameMeter

log = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux, with its terminating NUL (104 on the BSDs and macOS)
MAX_SOCKET_PATH = 107 if hasattr(socket, "SO_PEERCRED") else 103
_UCRED = struct.Struct("=iII")  # struct ucred: pid_t pid, uid_t uid, gid_t gid
# accept() errors that mean "out of something for now", not "the listener is broken"
_TRANSIENT_ACCEPT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


def socket_path(home: Path) -> Path | None:
    """The control socket of the node of ``home``; None if the path is too long for a Unix
    socket address (that node then has no local endpoint)."""
    path = home / CONTROL_SOCKET
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return None
    return path


# -- who is on the other end -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerCred:
    """The process at the other end of a Unix socket, as the kernel saw it at connect."""

    pid: int
    uid: int
    gid: int


def parse_peercred(raw: bytes) -> PeerCred:
    """A Linux ``struct ucred`` (what ``getsockopt(SO_PEERCRED)`` returns)."""
    pid, uid, gid = _UCRED.unpack(raw[: _UCRED.size])
    return PeerCred(pid, uid, gid)


def peer_cred(sock: Any) -> PeerCred | None:
    """The peer of a connected Unix socket; None where ``SO_PEERCRED`` does not exist."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    return parse_peercred(sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size))


def refusal(cred: PeerCred | None, own_uid: int) -> str | None:
    """Why a connection of ``cred`` may not use the endpoint of a node running as
    ``own_uid``; None if it may. Without credentials (a platform without ``SO_PEERCRED``)
    the socket file's mode is the only check, and it passed: the connection is in."""
    if cred is None or cred.uid == own_uid:
        return None
    return (
        f"the local control socket serves only the node's own user (uid {own_uid}); this "
        f"process runs as uid {cred.uid}: use the node's libp2p address with a client key "
        "in control.allowed_clients"
    )


# -- a connection as a protocols.stream.ByteStream ------------------------------------------


class PendingBudget:
    """Bytes of unfinished frames that the connections of the endpoint hold at once."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit  # None: unbounded
        self.held = 0

    def charge(self, delta: int) -> bool:
        """Take ``delta`` more bytes (or give back, if negative); False if over the limit
        (nothing is taken then)."""
        if delta > 0 and self.limit is not None and self.held + delta > self.limit:
            return False
        self.held = max(0, self.held + delta)
        return True


class LocalStream:
    """A connection to (or of) the control socket, as a :class:`protocols.stream.ByteStream`.

    ``remote_peer``: the client identity the node gives it (the home's client key).
    ``budget``: its share of the endpoint's pending bytes, kept as it reads (node side).
    ``write_timeout_s``: a write not taken within it ends the connection."""

    def __init__(
        self,
        stream: trio.SocketStream,
        remote_peer: str = "",
        *,
        budget: PendingBudget | None = None,
        write_timeout_s: float | None = None,
    ) -> None:
        self._stream = stream
        self.remote_peer = remote_peer
        self._budget = budget
        self._meter = FrameMeter() if budget is not None else None
        self._charged = 0
        self._write_timeout_s = write_timeout_s

    async def read(self, n: int) -> bytes:
        try:
            data = await self._stream.receive_some(n)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamClosedError(f"local control connection broke: {exc!r}") from None
        if self._meter is not None and self._budget is not None and data:
            pending = self._meter.feed(data)
            if not self._budget.charge(pending - self._charged):
                raise PeerOverLimitError(
                    f"local control connections hold over {self._budget.limit} bytes of "
                    "unfinished frames; the connection is closed"
                )
            self._charged = pending
        return data

    async def write(self, data: bytes) -> None:
        try:
            if self._write_timeout_s is None:
                await self._stream.send_all(data)
                return
            with trio.move_on_after(self._write_timeout_s):
                await self._stream.send_all(data)
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise StreamClosedError(f"local control connection broke: {exc!r}") from None
        raise StreamClosedError(f"local control client took no data for {self._write_timeout_s:g}s")

    async def close(self) -> None:
        if self._budget is not None:
            self._budget.charge(-self._charged)
            self._charged = 0
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._stream.aclose()

    async def reset(self) -> None:
        await self.close()  # (a Unix socket has no reset: the peer sees the end)


# -- the node's side ---------------------------------------------------------------------------

Handler = Callable[[LocalStream], Awaitable[None]]
Refuse = Callable[[LocalStream, str], Awaitable[None]]


class ControlSocket:
    """Serves ``handle`` (the control service's handler of one stream) on a Unix socket.

    ``refuse(stream, why)`` answers a connection of another uid (an ``unauthorised`` error).
    ``client_peer``: the identity every admitted connection gets. ``max_connections`` and
    ``max_pending_bytes`` bound what local clients hold at once (None: unbounded)."""

    def __init__(
        self,
        path: Path,
        handle: Handler,
        refuse: Refuse,
        *,
        client_peer: str,
        max_connections: int | None,
        max_pending_bytes: int | None,
        write_timeout_s: float,
        uid: int | None = None,
    ) -> None:
        self.path = path
        self._handle = handle
        self._refuse = refuse
        self.client_peer = client_peer
        self.max_connections = max_connections
        self.budget = PendingBudget(max_pending_bytes)
        self.write_timeout_s = write_timeout_s
        self.uid = os.getuid() if uid is None else uid
        self.open_connections = 0
        self.refused_connections = 0

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``task_status.started(path)`` once connections are taken,
        or ``started(None)`` (and return) if the socket cannot be made: one log line says
        why, and the node goes on without it. The socket file is removed on the way out."""
        listener = await self._listen()
        if listener is None:
            task_status.started(None)
            return
        inode = os.stat(self.path).st_ino
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(self.path)
                await self._accept_loop(listener, nursery)
        finally:
            with contextlib.suppress(OSError):
                if os.lstat(self.path).st_ino == inode:  # still ours
                    os.unlink(self.path)
            with contextlib.suppress(OSError, trio.ClosedResourceError):
                listener.socket.close()

    async def _listen(self) -> trio.SocketListener | None:
        path = self.path
        if not clear_stale(path):
            return None
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bound = False
        try:
            await sock.bind(str(path))
            bound = True
            # before listen(): until then nobody can connect, whatever the umask gave it
            os.chmod(path, 0o600)
            sock.listen(min(128, self.max_connections or 128))
        except OSError as exc:
            sock.close()
            if bound:  # (only the file this made)
                with contextlib.suppress(OSError):
                    os.unlink(path)
            log.warning(
                "no local control socket at %s (%s): the CLI uses libp2p", path, exc.strerror
            )
            return None
        return trio.SocketListener(sock)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _TRANSIENT_ACCEPT:
                    raise
                log.warning("local control socket: accept failed (%s); retrying", exc.strerror)
                await trio.sleep(0.1)  # (backoff: the condition is not ours to wait on)
                continue
            if self.max_connections is not None and self.open_connections >= self.max_connections:
                self.refused_connections += 1
                log.debug("local control connection refused: %d open", self.open_connections)
                await stream.aclose()
                continue
            self.open_connections += 1
            nursery.start_soon(self._serve_one, stream)

    async def _serve_one(self, raw: trio.SocketStream) -> None:
        stream = LocalStream(
            raw, self.client_peer, budget=self.budget, write_timeout_s=self.write_timeout_s
        )
        try:
            try:
                cred = peer_cred(raw.socket)
            except OSError as exc:  # (the client is gone already)
                log.info("local control connection dropped: no credentials (%s)", exc.strerror)
                return
            why = refusal(cred, self.uid)
            if why is not None:
                log.warning("refused a local control connection: %s", why)
                with trio.move_on_after(self.write_timeout_s):
                    await self._refuse(stream, why)
                return
            await self._handle(stream)
        except PeerOverLimitError as exc:
            log.info("local control connection closed: %s", exc)
        except Exception:  # a handler's failure ends its connection, never the node
            log.exception("local control connection failed")
        finally:
            self.open_connections -= 1
            await stream.close()


def clear_stale(path: Path) -> bool:
    """Make way for the socket at ``path``: remove a socket file left by a node that is
    gone (nobody accepts on it). False (and one log line) if something else is there, or
    a live node answers on it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return True
    except OSError as exc:
        log.warning("no local control socket: cannot inspect %s (%s)", path, exc.strerror)
        return False
    if not stat.S_ISSOCK(mode):
        log.warning("no local control socket: %s exists and is not a socket", path)
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: its node is gone
        log.info("removed the stale control socket %s", path)
        return True
    except OSError:
        pass  # (EAGAIN: a full backlog; it is alive)
    finally:
        probe.close()
    log.warning("no local control socket: a live process answers on %s", path)
    return False
