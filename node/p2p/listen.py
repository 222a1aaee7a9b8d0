"""TCP listen sockets that never share a port.

py-libp2p 0.8.1's TCP listener (``libp2p/transport/tcp/tcp.py``,
``_open_reuseport_listeners``) sets ``SO_REUSEPORT`` on every listen socket, so that DCUtR
hole punching can dial out from the listen port. With it, a second process listening on a
port already in use succeeds, and the kernel splits incoming connections between the two:
two nodes answer at random on one address. A port held by a socket *without* the flag
makes libp2p's listen fail, but only into a log line: the host runs with no address.

hivemesh therefore binds its TCP listen sockets itself (:class:`ListenSockets`), without
``SO_REUSEPORT``, before libp2p (or Ray) starts: a port in use is one
:class:`~node.errors.ListenError` naming the address. libp2p gets them through
:class:`node.p2p.tcp.ExclusiveTCP`, its TCP transport with a listener that serves the
sockets bound here. (Dials from the listen port then fall back to an ephemeral port, as
py-libp2p does on platforms without ``SO_REUSEPORT``; hivemesh does not hole-punch.)

This module does not import libp2p (a second of start-up), so that ``hivemesh node start``
can refuse a port in use before it imports libp2p or Ray.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable, Mapping
from types import TracebackType

import multiaddr

from node.errors import ListenError

MAX_PORT = 65535
BACKLOG = 128  # py-libp2p's and trio's default

_REASONS = {
    errno.EADDRINUSE: "address already in use",
    errno.EADDRNOTAVAIL: "address not available on this machine",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


def tcp_endpoint(addr: str) -> tuple[socket.AddressFamily, str, int]:
    """(family, host, port) of a listen address. Raises ListenError for anything but
    /ip4/HOST/tcp/PORT or /ip6/HOST/tcp/PORT: the node's host has no other transport
    (libp2p would skip such an address and leave the node without it, silently)."""
    try:
        ma = multiaddr.Multiaddr(addr)
        names = [p.name for p in ma.protocols()]
    except Exception as exc:  # multiaddr's parse errors: translated once, here
        raise ListenError(f"cannot listen on {addr}: not a valid multiaddr ({exc})") from None
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise ListenError(
            f"cannot listen on {addr}: a node listens on TCP only: give /ip4/HOST/tcp/PORT "
            "or /ip6/HOST/tcp/PORT"
        )
    family = socket.AF_INET if names[0] == "ip4" else socket.AF_INET6
    return family, str(ma.value_for_protocol(names[0])), int(ma.value_for_protocol("tcp"))


def bind_tcp(addr: str) -> socket.socket:
    """A listening socket for the TCP address ``addr``, without ``SO_REUSEPORT``.

    Raises ListenError (``cannot listen on ADDR: address already in use``, …)."""
    family, host, port = tcp_endpoint(addr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR (trio sets it too) lets a restarted node take its port back while
        # connections of the old one linger in TIME_WAIT; on Linux it never lets two
        # sockets listen on one port. SO_REUSEPORT, which would, is never set.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        reason = _REASONS.get(exc.errno or 0, (exc.strerror or str(exc)).lower())
        raise ListenError(f"cannot listen on {addr}: {reason}") from None
    return sock


def with_port(addr: str, port: int) -> str:
    """``addr`` (/ip4 or /ip6, /tcp) with its TCP port replaced by ``port``."""
    family, host, _ = tcp_endpoint(addr)
    return f"/{'ip4' if family == socket.AF_INET else 'ip6'}/{host}/tcp/{port}"


class ListenSockets:
    """The TCP listen sockets of a host, bound (and listening) before libp2p starts.

    :meth:`bind` binds every address of a listen list or none (ListenError naming the first
    that failed). The host's transport takes each socket when libp2p listens on its
    address; :meth:`close` closes those not taken. :attr:`ports` keeps the port each
    listen address got (remembered in the home for the next start, see
    :meth:`node.home.Home.bind_listen`); :attr:`notes` says what did not go as remembered."""

    def __init__(
        self,
        sockets: dict[str, socket.socket],
        *,
        ports: dict[str, int] | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self._sockets = sockets
        self.ports: dict[str, int] = dict(ports or {})
        self.notes: list[str] = list(notes or [])

    @classmethod
    def bind(
        cls, listen: Iterable[str], *, prefer: Mapping[str, int] | None = None
    ) -> ListenSockets:
        """Bind every address of ``listen``. An address with port 0 for which ``prefer``
        names a port (the one it had last time) gets that port when it is free, else any
        port, with a note saying so; an address with an explicit port gets exactly it."""
        bound: dict[str, socket.socket] = {}
        ports: dict[str, int] = {}
        notes: list[str] = []
        try:
            for addr in listen:
                key = _key(addr)
                if key in bound:
                    continue
                wanted = (prefer or {}).get(key)
                if wanted and 0 < wanted <= MAX_PORT and tcp_endpoint(addr)[2] == 0:
                    try:
                        sock = bind_tcp(with_port(addr, wanted))
                    except ListenError as exc:
                        sock = bind_tcp(addr)
                        reason = str(exc).rpartition(": ")[2]
                        notes.append(
                            f"listen port {wanted} (remembered for {addr}) is not free "
                            f"({reason}); listening on port {sock.getsockname()[1]} instead"
                        )
                else:
                    sock = bind_tcp(addr)
                bound[key] = sock
                ports[key] = int(sock.getsockname()[1])
        except BaseException:
            for sock in bound.values():
                sock.close()
            raise
        return cls(bound, ports=ports, notes=notes)

    def take(self, addr: str) -> socket.socket | None:
        """The socket bound for ``addr`` (the caller owns it from now on), or None."""
        return self._sockets.pop(_key(addr), None)

    def close(self) -> None:
        sockets, self._sockets = self._sockets, {}
        for sock in sockets.values():
            sock.close()

    def __enter__(self) -> ListenSockets:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _key(addr: str) -> str:
    try:
        return str(multiaddr.Multiaddr(addr))
    except Exception:
        return addr
