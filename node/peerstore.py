"""The peers a node remembers across restarts: ``HOME/peers.json``.

A node that restarts (on the same port or a new one) finds its swarm again by dialling the
peers it knew, so it needs no bootstrap of its own. What goes in is decided by discovery
(:meth:`node.discovery.DiscoveryService`): only swarm members this node was connected to and
that sent it a valid card first-hand, never peers it only heard of; and only addresses it
verified, i.e. the address it dialled the peer at, or addresses the peer signed for itself
at the IP its connection came from — so no peer can make this node remember (and dial at
every start) an address elsewhere.

Bounded: at most ``size`` peers (the ones reached by dialling first, then the most recently
seen), :data:`MAX_ADDRS_PER_PEER` addresses each, entries older than ``max_age_s`` dropped; a
file larger than the bound is not read. Written atomically (a crash leaves the old file or
the new one). A corrupt or hostile file is one warning line and is ignored, never a crash.
The clock is injected (wall-clock seconds: entries outlive the process).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from node.addr_record import transport_part
from node.errors import HomeError, ListenError
from node.home import read_bounded, write_atomic
from node.p2p.listen import tcp_endpoint

if TYPE_CHECKING:
    from node.p2p import ConnectionInfo

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_ADDRS_PER_PEER = 4
MAX_ADDR_CHARS = 256
MAX_ENTRY_BYTES = 2048  # one entry as JSON, at most (the file-size bound is made of it)
SEEN_RESOLUTION_S = 300.0  # a newer ``seen`` alone is written at most this often
FUTURE_SLACK_S = 24 * 3600.0  # a ``seen`` further ahead than this is not believed


@dataclass(frozen=True)
class RememberedPeer:
    """A peer as remembered: full dial addresses (``…/p2p/<peer_id>``), when it was last
    verified (wall-clock seconds), and whether one address was proven by dialling it."""

    peer_id: str
    addrs: tuple[str, ...]
    seen: float
    dialled: bool

    def rank(self) -> tuple[bool, float, str]:
        """Higher is kept first: reached by dialling, then seen recently."""
        return (self.dialled, self.seen, self.peer_id)

    def to_json(self) -> dict[str, object]:
        return {
            "peer_id": self.peer_id,
            "addrs": list(self.addrs),
            "seen": self.seen,
            "dialled": self.dialled,
        }


class CorruptPeerStoreError(HomeError):
    """The peer store file is not what a node writes."""


class PeerStore:
    """The remembered peers (in memory), loaded from and saved to ``path``.

    ``size`` 0 disables it: nothing is read, remembered or written."""

    def __init__(
        self,
        path: Path,
        *,
        self_id: str,
        size: int,
        max_age_s: float,
        valid_peer_id: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.self_id = self_id
        self.size = size
        self.max_age_s = max_age_s
        self._valid_peer_id = valid_peer_id
        self._clock = clock
        self._peers: dict[str, RememberedPeer] = {}
        self.dirty = False

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, peer_id: str) -> RememberedPeer | None:
        return self._peers.get(peer_id)

    def peers(self) -> list[RememberedPeer]:
        """Best first (see :meth:`RememberedPeer.rank`)."""
        return sorted(self._peers.values(), key=RememberedPeer.rank, reverse=True)

    @property
    def max_file_bytes(self) -> int:
        return 1024 + self.size * MAX_ENTRY_BYTES

    # -- reading -------------------------------------------------------------------------

    def load(self) -> list[RememberedPeer]:
        """Read the file (if any) into memory and return its peers, best first. A file that
        cannot be used is one warning line and leaves the store empty."""
        self._peers.clear()
        self.dirty = False
        if self.size <= 0:
            return []
        try:
            peers, skipped = self._read()
        except CorruptPeerStoreError as exc:
            log.warning("ignored the peer store: %s", exc)
            return []
        if skipped:
            log.warning(
                "peer store %s: ignored %d invalid entr%s",
                self.path,
                skipped,
                "y" if skipped == 1 else "ies",
            )
        for peer in peers:
            known = self._peers.get(peer.peer_id)
            if known is None or peer.rank() > known.rank():
                self._peers[peer.peer_id] = peer
        self._trim()
        return self.peers()

    def _read(self) -> tuple[list[RememberedPeer], int]:
        try:
            raw = read_bounded(self.path, self.max_file_bytes)
        except HomeError as exc:
            raise CorruptPeerStoreError(str(exc)) from None
        if raw is None:
            return [], 0
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise CorruptPeerStoreError(f"{self.path} is not valid JSON") from None
        entries = data.get("peers") if isinstance(data, dict) else None
        if not isinstance(entries, list) or data.get("version") != FORMAT_VERSION:
            raise CorruptPeerStoreError(
                f"{self.path} is not a peer store of version {FORMAT_VERSION}"
            )
        now = self._clock()
        peers: list[RememberedPeer] = []
        skipped = 0
        for entry in entries:
            peer = self._entry(entry, now)
            if peer is None:
                skipped += 1
            elif now - peer.seen <= self.max_age_s:
                peers.append(peer)
        return peers, skipped

    def _entry(self, entry: object, now: float) -> RememberedPeer | None:
        if not isinstance(entry, dict) or set(entry) != {"peer_id", "addrs", "seen", "dialled"}:
            return None
        peer_id, addrs, seen, dialled = (entry[k] for k in ("peer_id", "addrs", "seen", "dialled"))
        if not isinstance(peer_id, str) or len(peer_id) > 128 or peer_id == self.self_id:
            return None
        if not isinstance(dialled, bool) or not isinstance(seen, (int, float)):
            return None
        if isinstance(seen, bool) or not math.isfinite(seen) or seen > now + FUTURE_SLACK_S:
            return None
        if not isinstance(addrs, list) or not 0 < len(addrs) <= MAX_ADDRS_PER_PEER:
            return None
        if not all(isinstance(a, str) and dial_addr_of(a, peer_id) == a for a in addrs):
            return None
        if not self._valid_peer_id(peer_id):
            return None
        return RememberedPeer(peer_id, tuple(addrs), float(seen), dialled)

    # -- remembering ---------------------------------------------------------------------

    def saw(self, peer_id: str, addrs: Iterable[str], *, dialled: bool) -> None:
        """``peer_id`` was verified just now at ``addrs`` (full dial addresses, checked by
        the caller; invalid ones are dropped, at most :data:`MAX_ADDRS_PER_PEER` kept)."""
        if self.size <= 0 or peer_id == self.self_id:
            return
        kept: list[str] = []
        for addr in addrs:
            if dial_addr_of(addr, peer_id) == addr and addr not in kept:
                kept.append(addr)
        del kept[MAX_ADDRS_PER_PEER:]
        if not kept:
            return
        now = self._clock()
        new = RememberedPeer(peer_id, tuple(kept), now, dialled)
        old = self._peers.get(peer_id)
        if old is not None:
            if old.dialled and not dialled and set(new.addrs) <= set(old.addrs):
                # an inbound connection of a peer we reached by dialling says nothing new
                new = replace(old, seen=now)
            if (new.addrs, new.dialled) == (old.addrs, old.dialled) and (
                now - old.seen < SEEN_RESOLUTION_S
            ):
                return
        self._peers[peer_id] = new
        self.dirty = True
        self._trim()

    def forget(self, peer_id: str) -> None:
        if self._peers.pop(peer_id, None) is not None:
            self.dirty = True

    def _trim(self) -> None:
        if len(self._peers) <= self.size:
            return
        for peer in self.peers()[self.size :]:
            del self._peers[peer.peer_id]
        self.dirty = True

    # -- writing -------------------------------------------------------------------------

    def snapshot(self) -> bytes | None:
        """The file's new content if anything changed since the last snapshot, else None."""
        if not self.dirty:
            return None
        self.dirty = False
        now = self._clock()
        peers = [p.to_json() for p in self.peers() if now - p.seen <= self.max_age_s]
        return json.dumps({"version": FORMAT_VERSION, "peers": peers}, indent=1).encode()

    def write(self, data: bytes) -> None:
        """Write a :meth:`snapshot` (atomically; HomeError, one line, if it cannot)."""
        write_atomic(self.path, data)

    def save(self) -> None:
        """Write the store if it changed (HomeError if it cannot)."""
        data = self.snapshot()
        if data is not None:
            try:
                self.write(data)
            except HomeError:
                self.dirty = True
                raise


def dial_addr_of(addr: str, peer_id: str) -> str | None:
    """``addr`` in the form the store keeps (``/ip4|ip6/HOST/tcp/PORT/p2p/<peer_id>``, with
    a concrete host and port), or None if it is anything else."""
    if len(addr) > MAX_ADDR_CHARS:
        return None
    base, sep, rest = addr.partition("/p2p/")
    if not sep or rest != peer_id:
        return None
    try:
        family, host, port = tcp_endpoint(base)
    except ListenError:
        return None
    if port == 0 or host in ("0.0.0.0", "::"):
        return None
    return tcp_addr(family == socket.AF_INET6, host, port, peer_id)


def tcp_addr(ip6: bool, host: str, port: int, peer_id: str) -> str:
    return f"/{'ip6' if ip6 else 'ip4'}/{host}/tcp/{port}/p2p/{peer_id}"


def verified_addrs(peer_id: str, own: Iterable[str], conn: ConnectionInfo) -> list[str]:
    """The addresses of ``peer_id`` this node may remember, given the addresses the peer
    gave for itself (``own``: its card's or its signed record's) and the connection its
    card came on: the address this node dialled it at (outbound: Noise proved the peer id
    there), then those of ``own`` at the IP the connection comes from (an unspecified host,
    0.0.0.0 or ::, read as that IP). Never an address at another IP: a peer cannot make this
    node dial elsewhere at every start. At most :data:`MAX_ADDRS_PER_PEER`."""
    try:
        ip = ipaddress.ip_address(conn.ip)
    except ValueError:
        return []
    out: list[str] = []
    if conn.outbound and conn.port > 0:
        out.append(tcp_addr(ip.version == 6, str(ip), conn.port, peer_id))
    for addr in own:
        if len(out) >= MAX_ADDRS_PER_PEER:
            break
        base = transport_part(addr, peer_id)
        if base is None or len(base) > MAX_ADDR_CHARS:
            continue
        try:
            _, host, port = tcp_endpoint(base)
            at = ipaddress.ip_address(host)
        except (ListenError, ValueError):
            continue
        if at.is_unspecified and at.version == ip.version:
            at = ip
        full = tcp_addr(ip.version == 6, str(ip), port, peer_id)
        if at == ip and port != 0 and full not in out:
            out.append(full)
    return out
