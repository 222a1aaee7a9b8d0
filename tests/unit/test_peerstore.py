"""The peer store (HOME/peers.json): what a node remembers of its swarm across restarts."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair

from node.home import peer_id_of
from node.p2p import ConnectionInfo, valid_peer_id
from node.peerstore import (
    MAX_ADDRS_PER_PEER,
    SEEN_RESOLUTION_S,
    PeerStore,
    RememberedPeer,
    verified_addrs,
)

DAY = 24 * 3600.0


def new_peer_id() -> str:
    return peer_id_of(create_new_key_pair())


SELF = new_peer_id()


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store(path: Path, clock: Clock, size: int = 8, max_age_s: float = 7 * DAY) -> PeerStore:
    return PeerStore(
        path / "peers.json",
        self_id=SELF,
        size=size,
        max_age_s=max_age_s,
        valid_peer_id=valid_peer_id,
        clock=clock,
    )


def addr(peer_id: str, port: int, host: str = "127.0.0.1") -> str:
    return f"/ip4/{host}/tcp/{port}/p2p/{peer_id}"


def test_round_trip(tmp_path: Path) -> None:
    clock = Clock()
    s = store(tmp_path, clock)
    a, b, c = new_peer_id(), new_peer_id(), new_peer_id()
    s.saw(a, [addr(a, 4001)], dialled=True)
    clock.now += 10
    s.saw(b, [addr(b, 4002), addr(b, 4003)], dialled=False)
    clock.now += 10
    s.saw(c, [addr(c, 4004)], dialled=True)
    s.save()
    assert s.snapshot() is None  # nothing changed since
    mode = stat.S_IMODE(s.path.stat().st_mode)
    assert mode == 0o600 and list(tmp_path.iterdir()) == [s.path]  # no temporary file left

    loaded = store(tmp_path, clock).load()
    assert loaded == [
        RememberedPeer(c, (addr(c, 4004),), clock.now, True),
        RememberedPeer(a, (addr(a, 4001),), clock.now - 20, True),
        RememberedPeer(b, (addr(b, 4002), addr(b, 4003)), clock.now - 10, False),
    ]


def test_new_addresses_replace_the_old_ones_and_unchanged_ones_are_not_rewritten(
    tmp_path: Path,
) -> None:
    clock = Clock()
    s = store(tmp_path, clock)
    a = new_peer_id()
    s.saw(a, [addr(a, 4001)], dialled=True)
    s.save()
    clock.now += 60
    s.saw(a, [addr(a, 4001)], dialled=True)
    assert not s.dirty  # the same peer seen again: no write every refresh
    s.saw(a, [addr(a, 4001)], dialled=False)  # its inbound connection says nothing new
    assert not s.dirty
    clock.now += SEEN_RESOLUTION_S
    s.saw(a, [addr(a, 4001)], dialled=True)
    assert s.dirty
    s.saw(a, [addr(a, 5001)], dialled=True)  # restarted on another port
    s.save()
    (peer,) = store(tmp_path, clock).load()
    assert peer.addrs == (addr(a, 5001),) and peer.seen == clock.now


def test_the_store_is_bounded_and_keeps_the_peers_it_dialled_then_the_recent_ones(
    tmp_path: Path,
) -> None:
    clock = Clock()
    s = store(tmp_path, clock, size=3)
    dialled = [new_peer_id() for _ in range(2)]
    inbound = [new_peer_id() for _ in range(5)]
    for p in dialled:
        s.saw(p, [addr(p, 4000)], dialled=True)
    for p in inbound:
        clock.now += 1
        s.saw(p, [addr(p, 4000 + j) for j in range(10)], dialled=False)  # too many addresses
        assert len(s) <= 3
    s.save()
    kept = store(tmp_path, clock, size=3).load()
    assert {p.peer_id for p in kept[:2]} == set(dialled) and kept[2].peer_id == inbound[-1]
    assert all(len(p.addrs) <= MAX_ADDRS_PER_PEER for p in kept)
    assert len(kept[-1].addrs) == MAX_ADDRS_PER_PEER
    # the file is bounded accordingly: a smaller store reads only what fits it
    assert s.path.stat().st_size < s.max_file_bytes


def test_addresses_a_node_never_dials_are_not_remembered(tmp_path: Path) -> None:
    clock = Clock()
    s = store(tmp_path, clock)
    a, other = new_peer_id(), new_peer_id()
    s.saw(
        a,
        [
            addr(other, 4001),  # another peer's
            "/ip4/127.0.0.1/tcp/4001",  # no peer id
            "/ip4/0.0.0.0/tcp/4001/p2p/" + a,  # no host to dial
            "/ip4/127.0.0.1/tcp/0/p2p/" + a,  # no port
            "/dns4/example.com/tcp/4001/p2p/" + a,
            "/ip4/127.0.0.1/udp/4001/quic-v1/p2p/" + a,
            "/ip4/127.0.0.1/tcp/4001/p2p/" + a + "x" * 300,
        ],
        dialled=False,
    )
    s.saw(SELF, [addr(SELF, 4001)], dialled=True)
    assert len(s) == 0 and s.snapshot() is None


def test_entries_older_than_max_age_are_dropped(tmp_path: Path) -> None:
    clock = Clock()
    s = store(tmp_path, clock, max_age_s=DAY)
    old, new = new_peer_id(), new_peer_id()
    s.saw(old, [addr(old, 4001)], dialled=True)
    clock.now += DAY / 2
    s.saw(new, [addr(new, 4002)], dialled=True)
    s.save()
    clock.now += DAY * 0.75
    assert [p.peer_id for p in store(tmp_path, clock, max_age_s=DAY).load()] == [new]


def test_size_zero_remembers_and_writes_nothing(tmp_path: Path) -> None:
    s = store(tmp_path, Clock(), size=0)
    a = new_peer_id()
    s.saw(a, [addr(a, 4001)], dialled=True)
    s.save()
    assert not s.path.exists() and s.load() == []


VALID = new_peer_id()


def _file(*entries: object, version: object = 1) -> bytes:
    return json.dumps({"version": version, "peers": list(entries)}).encode()


def _entry(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "peer_id": VALID,
        "addrs": [addr(VALID, 4001)],
        "seen": 1_800_000_000.0,
        "dialled": True,
    }
    base.update(over)
    return base


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[" * 200_000,
        b"[1, 2, 3]",
        b'{"peers": "x"}',
        _file(_entry(), version=2),
        b'{"version": 1, "peers": [], "pad": "' + b"x" * 20_000 + b'"}',  # over the bound
    ],
)
def test_a_corrupt_file_is_one_warning_and_ignored(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    s = store(tmp_path, Clock())
    s.path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="node.peerstore"):
        assert s.load() == []
    (record,) = caplog.records
    assert record.getMessage().startswith(f"ignored the peer store: {s.path}")
    assert "\n" not in record.getMessage()
    # and the node goes on remembering: the next save replaces the bad file
    a = new_peer_id()
    s.saw(a, [addr(a, 4001)], dialled=True)
    s.save()
    assert [p.peer_id for p in store(tmp_path, Clock()).load()] == [a]


@pytest.mark.parametrize(
    "bad",
    [
        _entry(peer_id="not-a-peer-id"),
        _entry(peer_id=SELF, addrs=[addr(SELF, 4001)]),
        _entry(addrs=[addr(new_peer_id(), 4001)]),  # an address of another peer
        _entry(addrs=["/ip4/10.0.0.1/tcp/22"]),
        _entry(addrs=[addr(VALID, p) for p in range(4001, 4001 + MAX_ADDRS_PER_PEER + 1)]),
        _entry(addrs=[]),
        _entry(addrs="x"),
        _entry(seen="yesterday"),
        _entry(seen=True),
        _entry(seen=1e300),  # in the future
        _entry(dialled="yes"),
        _entry(extra=1),
        "a string",
        None,
    ],
)
def test_invalid_entries_are_skipped_with_one_warning(
    tmp_path: Path, bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    good = new_peer_id()
    s = store(tmp_path, Clock())
    s.path.write_bytes(
        _file(bad, _entry(peer_id=good, addrs=[addr(good, 5001)], seen=1_799_999_999.0))
    )
    with caplog.at_level(logging.WARNING, logger="node.peerstore"):
        loaded = s.load()
    assert [p.peer_id for p in loaded] == [good]
    (record,) = caplog.records
    assert record.getMessage() == f"peer store {s.path}: ignored 1 invalid entry"


def test_a_nan_seen_is_skipped(tmp_path: Path) -> None:
    s = store(tmp_path, Clock())
    s.path.write_text(_file(_entry()).decode().replace("1800000000.0", "NaN"))
    assert s.load() == []


def test_an_unwritable_home_is_an_error_and_the_changes_are_kept(tmp_path: Path) -> None:
    from node.errors import HomeError

    s = store(tmp_path / "missing", Clock())
    a = new_peer_id()
    s.saw(a, [addr(a, 4001)], dialled=True)
    with pytest.raises(HomeError, match=r"^cannot write .*peers\.json: "):
        s.save()
    assert s.dirty  # saved on the next try


# -- which addresses of a peer may be remembered -----------------------------------------------


def test_an_outbound_connection_proves_the_address_dialled_then_own_ones_at_that_ip() -> None:
    a = new_peer_id()
    own = ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/tcp/4002", "/ip4/10.0.0.5/tcp/4003"]
    assert verified_addrs(a, own, ConnectionInfo("127.0.0.1", 4002, outbound=True)) == [
        addr(a, 4002),
        addr(a, 4001),
    ]


def test_an_inbound_connection_proves_only_the_peers_own_addresses_at_its_ip() -> None:
    a = new_peer_id()
    own = [
        "/ip4/10.9.9.9/tcp/22",  # elsewhere: a victim
        f"/ip4/127.0.0.1/tcp/4001/p2p/{a}",
        f"/ip4/127.0.0.1/tcp/4009/p2p/{new_peer_id()}",  # another peer's
        "/ip4/0.0.0.0/tcp/4002",  # all interfaces: its IP
        "/ip4/127.0.0.1/tcp/0",
        "/ip6/::1/tcp/4003",
        "/dns4/localhost/tcp/4004",
        "not an address",
    ]
    conn = ConnectionInfo("127.0.0.1", 51234, outbound=False)
    assert verified_addrs(a, own, conn) == [addr(a, 4001), addr(a, 4002)]
    six = ConnectionInfo("::1", 51234, outbound=False)
    assert verified_addrs(a, own, six) == [f"/ip6/::1/tcp/4003/p2p/{a}"]


def test_at_most_four_addresses_are_verified() -> None:
    a = new_peer_id()
    own = [f"/ip4/127.0.0.1/tcp/{p}" for p in range(4001, 4033)]
    conn = ConnectionInfo("127.0.0.1", 5000, outbound=True)
    got = verified_addrs(a, own, conn)
    assert got == [addr(a, 5000), *(addr(a, p) for p in range(4001, 4004))]
    assert len(got) == MAX_ADDRS_PER_PEER


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_a_peer_store_that_is_not_a_regular_file_is_one_warning_and_never_blocks(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    s = store(tmp_path, Clock())
    if kind == "fifo":
        os.mkfifo(s.path)  # reading it would block the start
    elif kind == "device":
        s.path.symlink_to("/dev/zero")  # reading it would never end
    else:
        s.path.mkdir()
    with caplog.at_level(logging.WARNING, logger="node.peerstore"):
        assert s.load() == []
    (record,) = caplog.records
    assert record.getMessage() == f"ignored the peer store: {s.path} is not a regular file"
