"""A node told to join a Ray cluster that is not there says so at once, in one line
(``ray.init`` would retry for minutes)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from node.daemon import check_ray_address
from node.errors import ConfigError


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_an_unreachable_cluster_is_one_line(closed_port: int, form: str) -> None:
    address = form.format(port=closed_port)
    with pytest.raises(ConfigError) as err:
        check_ray_address(address, timeout_s=5.0)
    assert str(err.value) == (
        f"cannot reach the Ray cluster at {address} (connection refused): start it, or fix "
        "ray.address (--ray-address)"
    )


def test_a_listening_cluster_address_passes() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        check_ray_address(f"127.0.0.1:{sock.getsockname()[1]}")


@pytest.mark.parametrize("address", [None, "auto", "local", "no-port-here"])
def test_forms_ray_resolves_itself_are_left_to_ray(address: str | None) -> None:
    check_ray_address(address)
