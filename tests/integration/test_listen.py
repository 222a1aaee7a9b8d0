"""One node per port: real libp2p hosts on 127.0.0.1 never share a listen port.

py-libp2p 0.8.1 binds its TCP listeners with SO_REUSEPORT, so a second host on a port in
use used to listen too (and the kernel split connections between the two), and a port held
by a socket without the flag left the host running with no address at all."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from node.errors import ListenError, NodeUnreachableError
from node.home import Home
from node.p2p import ListenSockets, P2PHost
from node.p2p.listen import tcp_endpoint


def host() -> P2PHost:
    return P2PHost(create_new_key_pair(), dial_timeout_s=5.0, shutdown_timeout_s=2.0)


@pytest.fixture
def plain_listener() -> Iterator[int]:
    """A port held by an ordinary listening socket (no SO_REUSEPORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def test_a_second_host_on_a_port_in_use_is_refused_and_the_first_keeps_it() -> None:
    first, second, client = host(), host(), host()
    with trio.fail_after(30):
        async with first.run(["/ip4/127.0.0.1/tcp/0"]):
            (addr,) = first.transport_addrs()
            with pytest.raises(ListenError) as err:
                async with second.run([addr]):
                    pass
            assert str(err.value) == f"cannot listen on {addr}: address already in use"
            # every connection to the port still reaches the first host
            async with client.run(["/ip4/127.0.0.1/tcp/0"]):
                assert await client.connect_addr(first.addrs()[0]) == first.peer_id


async def test_a_port_held_by_another_socket_is_refused(plain_listener: int) -> None:
    addr = f"/ip4/127.0.0.1/tcp/{plain_listener}"
    with pytest.raises(ListenError, match=f"^cannot listen on {addr}: address already in use$"):
        async with host().run([addr]):
            pass


async def test_port_zero_gives_each_host_a_port_of_its_own() -> None:
    a, b = host(), host()
    with trio.fail_after(30):
        async with a.run(["/ip4/127.0.0.1/tcp/0"]), b.run(["/ip4/127.0.0.1/tcp/0"]):
            (a_addr,), (b_addr,) = a.transport_addrs(), b.transport_addrs()
            assert a_addr != b_addr and not a_addr.endswith("/tcp/0")
            assert await b.connect_addr(a.addrs()[0]) == a.peer_id
            assert b.peer_id in a.connected_peers()


def test_listen_sockets_are_bound_without_so_reuseport() -> None:
    with ListenSockets.bind(["/ip4/127.0.0.1/tcp/0"]) as sockets:
        sock = sockets.take("/ip4/127.0.0.1/tcp/0")
        assert sock is not None
        with sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0


def test_a_refused_address_releases_the_ports_bound_before_it(plain_listener: int) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = int(probe.getsockname()[1])
    first = f"/ip4/127.0.0.1/tcp/{free}"
    with pytest.raises(ListenError, match=f"tcp/{plain_listener}: address already in use"):
        ListenSockets.bind([first, f"/ip4/127.0.0.1/tcp/{plain_listener}"])
    with ListenSockets.bind([first]):  # nothing of the refused set is left behind
        pass


@pytest.mark.parametrize(
    ("addr", "message"),
    [
        ("/dns4/localhost/tcp/0", "a node listens on TCP only: give /ip4/HOST/tcp/PORT"),
        ("/ip4/127.0.0.1/tcp/0/ws", "a node listens on TCP only"),
        ("/ip4/127.0.0.1/udp/0/quic-v1", "a node listens on TCP only"),
        ("/ip4/127.0.0.1/tcp/99999", "not a valid multiaddr"),
        ("garbage", "not a valid multiaddr"),
    ],
)
def test_an_address_that_cannot_be_listened_on_is_one_line(addr: str, message: str) -> None:
    with pytest.raises(ListenError) as err:
        ListenSockets.bind(["/ip4/127.0.0.1/tcp/0", addr])
    assert str(err.value).startswith(f"cannot listen on {addr}: ")
    assert message in str(err.value) and "\n" not in str(err.value)


async def test_an_address_libp2p_would_skip_fails_the_host_instead_of_a_silent_start() -> None:
    # the host has one transport, TCP: py-libp2p would skip a WebSocket address and run
    # without it
    with pytest.raises(ListenError, match="a node listens on TCP only"):
        async with host().run(["/ip4/127.0.0.1/tcp/0/ws"]):
            pass


def test_ip6_addresses_are_tcp_addresses_too() -> None:
    assert tcp_endpoint("/ip6/::1/tcp/0") == (socket.AF_INET6, "::1", 0)


# -- a node keeps its port: port 0 takes the port of the last start when it is free ---------

ANY = "/ip4/127.0.0.1/tcp/0"


def test_a_home_remembers_its_port_and_gets_it_again(tmp_path: Path) -> None:
    home = Home(tmp_path / "n")
    home.path.mkdir()
    with home.bind_listen([ANY]) as first:
        port = first.ports[ANY]
        assert port != 0 and first.notes == []
        home.remember_ports(first.ports)
    with home.bind_listen([ANY]) as again:
        assert again.ports == {ANY: port} and again.notes == []
        sock = again.take(ANY)
        assert sock is not None
        with sock:
            assert sock.getsockname()[1] == port


def test_a_remembered_port_that_is_taken_gives_a_new_port_and_one_note(
    tmp_path: Path, plain_listener: int
) -> None:
    home = Home(tmp_path / "n")
    home.path.mkdir()
    home.remember_ports({ANY: plain_listener})
    with home.bind_listen([ANY]) as sockets:
        assert sockets.ports[ANY] not in (0, plain_listener)
        (note,) = sockets.notes
        assert note == (
            f"listen port {plain_listener} (remembered for {ANY}) is not free (address "
            f"already in use); listening on port {sockets.ports[ANY]} instead"
        )


def test_an_explicit_port_always_wins_over_a_remembered_one(
    tmp_path: Path, plain_listener: int
) -> None:
    home = Home(tmp_path / "n")
    home.path.mkdir()
    with ListenSockets.bind([ANY]) as other:
        explicit = f"/ip4/127.0.0.1/tcp/{other.ports[ANY]}"
    home.remember_ports({explicit: plain_listener, ANY: plain_listener})
    with home.bind_listen([explicit]) as sockets:
        assert sockets.ports == {explicit: int(explicit.rsplit("/", 1)[1])}
        assert sockets.notes == []
    # and remember_port: false ignores the record
    with home.bind_listen([ANY], remember=False) as sockets:
        assert sockets.notes == [] and sockets.ports[ANY] != plain_listener


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[1, 2]",
        b'{"ports": {"/ip4/127.0.0.1/tcp/0": "80"}}',
        b'{"ports": {"/ip4/127.0.0.1/tcp/0": 70000}}',
        b'{"ports": {"/ip4/127.0.0.1/tcp/0": true}}',
        b"[" * 100_000,
        b'{"ports": {}, "pad": "' + b"x" * 70_000 + b'"}',
        b"\xff\xfe",
    ],
)
def test_a_corrupt_port_record_is_one_note_and_ignored(tmp_path: Path, content: bytes) -> None:
    home = Home(tmp_path / "n")
    home.path.mkdir()
    home.listen_file.write_bytes(content)
    with home.bind_listen([ANY]) as sockets:
        (note,) = sockets.notes
        assert note.startswith(f"{home.listen_file} ") and "\n" not in note
        assert note.endswith("; ignored it (the node listens on new ports)")
        assert sockets.ports[ANY] != 0


def test_a_port_record_that_is_not_a_regular_file_is_one_note_and_never_blocks(
    tmp_path: Path,
) -> None:
    home = Home(tmp_path / "n")
    home.path.mkdir()
    os.mkfifo(home.listen_file)  # reading it would block the start
    with home.bind_listen([ANY]) as sockets:
        assert sockets.notes == [
            f"{home.listen_file} is not a regular file; ignored it (the node listens on new ports)"
        ]


async def test_a_peer_back_on_its_port_is_dialled_again_at_once() -> None:
    """A dial that failed (the peer was down) does not keep the peer unreachable once it is
    back on the same address: py-libp2p's negative cache would refuse every dial to it for
    60 s without trying."""
    key = create_new_key_pair()
    client = host()
    with socket.socket() as sock:  # a port nobody listens on, for now
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    addr = f"/ip4/127.0.0.1/tcp/{port}"
    with trio.fail_after(30):
        async with client.run(["/ip4/127.0.0.1/tcp/0"]):
            back = P2PHost(key, dial_timeout_s=5.0, shutdown_timeout_s=2.0)
            with pytest.raises(NodeUnreachableError):
                await client.connect_addr(f"{addr}/p2p/{back.peer_id}")
            async with back.run([addr]):
                assert await client.connect_addr(back.addrs()[0]) == back.peer_id
