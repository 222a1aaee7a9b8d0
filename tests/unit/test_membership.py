"""Swarm membership without a network: ``hivemesh init`` (new swarm, ``--swarm-key``,
``--open``), the config's ``swarm`` section, which key a node and the CLI use, and the
one-line messages for a node of another swarm."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from node.cli import main
from node.client import client_swarm, explain_refusal
from node.config import NodeConfig, SwarmConfig, load_config
from node.errors import ConfigError, SwarmKeyError
from node.home import Home, SwarmMembership
from node.p2p.pnet import CLOSED, KEYED_PEER, NO_KEY, OTHER_KEY
from node.swarmkey import SwarmKey


def init(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["init", *args])
    return result.exit_code, result.output


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_creates_a_new_swarm(tmp_path: Path) -> None:
    code, out = init("--home", str(tmp_path / "h"))
    assert code == 0, out
    key_file = tmp_path / "h" / "swarm.key"
    assert mode(key_file) == 0o600
    key = SwarmKey.load(key_file)
    assert f"swarm:   swarm key: {key_file} (a new swarm)" in out
    assert "copy this file to every machine" in out
    assert load_config(config_file=tmp_path / "h" / "config.yaml", environ={}).swarm == (
        SwarmConfig()
    )
    # again: the key is kept
    code, out = init("--home", str(tmp_path / "h"))
    assert code == 0 and "(kept)" in out and SwarmKey.load(key_file) == key


def test_two_homes_get_two_swarms(tmp_path: Path) -> None:
    Home(tmp_path / "a").init()
    Home(tmp_path / "b").init()
    assert SwarmKey.load(tmp_path / "a/swarm.key") != SwarmKey.load(tmp_path / "b/swarm.key")


def test_init_with_swarm_key_joins_by_copying(tmp_path: Path) -> None:
    source = tmp_path / "given.key"
    source.write_text(SwarmKey(b"\x01" * 32).file_text().rstrip("\n"))  # no final newline
    source.chmod(0o644)
    code, out = init("--home", str(tmp_path / "h"), "--swarm-key", str(source))
    assert code == 0, out
    copied = tmp_path / "h" / "swarm.key"
    assert mode(copied) == 0o600
    assert SwarmKey.load(copied) == SwarmKey(b"\x01" * 32)
    assert f"(copied from {source})" in out
    # the same key again is fine; another key is refused and the home keeps its own
    assert init("--home", str(tmp_path / "h"), "--swarm-key", str(source))[0] == 0
    other = tmp_path / "other.key"
    SwarmKey.generate().write_new(other)
    code, out = init("--home", str(tmp_path / "h"), "--swarm-key", str(other))
    assert code == 1
    assert out.startswith("error: ") and out.count("\n") == 1
    assert "already belongs to another swarm" in out and "remove that file first" in out
    assert SwarmKey.load(copied) == SwarmKey(b"\x01" * 32)


def test_init_with_an_invalid_key_file_creates_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("/key/swarm/psk/1.0.0/\n/base64/\nAAAA\n")
    code, out = init("--home", str(tmp_path / "h"), "--swarm-key", str(bad))
    assert code == 1
    assert out == (
        f"error: {bad}: unsupported swarm key encoding '/base64/': "
        "only '/base16/' (64 hex characters) is supported\n"
    )
    assert not (tmp_path / "h").exists()
    code, out = init("--home", str(tmp_path / "h"), "--swarm-key", str(tmp_path / "none.key"))
    assert code == 1 and "does not exist" in out


def test_init_open(tmp_path: Path) -> None:
    home = tmp_path / "h"
    code, out = init("--home", str(home), "--open")
    assert code == 0, out
    assert not (home / "swarm.key").exists()
    assert "open swarm" in out and "warning: an open swarm" in out
    config = load_config(config_file=home / "config.yaml", environ={})
    assert config.swarm.open is True
    assert Home(home).membership(config.swarm) == SwarmMembership(None, None)
    # joining a private swarm from an open home needs the config changed first
    key = tmp_path / "k.key"
    SwarmKey.generate().write_new(key)
    code, out = init("--home", str(home), "--swarm-key", str(key))
    assert code == 1 and "swarm.open: true" in out


def test_init_open_on_a_private_home_is_refused(tmp_path: Path) -> None:
    Home(tmp_path / "h").init()
    code, out = init("--home", str(tmp_path / "h"), "--open")
    assert code == 1
    assert "already belongs to a private swarm" in out and out.count("\n") == 1


def test_init_open_on_an_older_home_adds_the_section(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.init_identity()
    home.config_file.write_text("tools: all\n")  # written before the swarm section existed
    code, out = init("--home", str(home.path), "--open")
    assert code == 0, out
    assert load_config(config_file=home.config_file, environ={}).swarm.open is True


def test_open_and_swarm_key_together_is_a_usage_error(tmp_path: Path) -> None:
    code, out = init("--home", str(tmp_path / "h"), "--open", "--swarm-key", "x")
    assert code == 2 and "choose one" in out


def test_membership_creates_only_the_default_key(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.init_identity()
    with pytest.raises(SwarmKeyError, match=r"no swarm key at .*hivemesh init --home"):
        home.membership(SwarmConfig())
    created = home.membership(SwarmConfig(), create=True)
    assert created.created and created.key_file == home.swarm_key
    again = home.membership(SwarmConfig(), create=True)
    assert not again.created and again.key == created.key
    elsewhere = SwarmConfig(key_file=tmp_path / "elsewhere.key")
    with pytest.raises(SwarmKeyError, match="does not exist"):
        home.membership(elsewhere, create=True)
    assert not (tmp_path / "elsewhere.key").exists()
    relative = SwarmConfig(key_file=Path("swarm.key"))
    assert home.membership(relative).key == created.key


def test_swarm_config_rules() -> None:
    assert NodeConfig().swarm == SwarmConfig(key_file=None, open=False, handshake_timeout_s=1.5)
    quic = {"network": {"listen": ["/ip4/127.0.0.1/udp/0/quic-v1"]}}
    with pytest.raises(ConfigError) as info:
        load_config(config_file=None, flags=quic, environ={})
    assert "QUIC address, which cannot be used in a private swarm" in str(info.value)
    assert "Value error" not in str(info.value)
    opened = load_config(config_file=None, flags={**quic, "swarm": {"open": True}}, environ={})
    assert opened.swarm.open
    with pytest.raises(ConfigError, match="remove one of them"):
        load_config(config_file=None, flags={"swarm": {"open": True, "key_file": "k"}}, environ={})
    env = {"HIVEMESH_SWARM__KEY_FILE": "/keys/a.key", "HIVEMESH_SWARM__HANDSHAKE_TIMEOUT_S": "3"}
    config = load_config(config_file=None, environ=env)
    assert config.swarm.key_file == Path("/keys/a.key") and config.swarm.handshake_timeout_s == 3


def test_which_key_the_cli_uses(tmp_path: Path) -> None:
    home = Home(tmp_path / "h")
    home.init()
    own = SwarmKey.load(home.swarm_key)
    given = tmp_path / "given.key"
    SwarmKey.generate().write_new(given)
    addr = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWAaaa"
    # --swarm-key first
    assert client_swarm(home, addr, given).key == SwarmKey.load(given)
    # the home's key
    assert client_swarm(home, addr, None) == SwarmMembership(own, home.swarm_key)
    # the home's running node: the key it runs with (it may have been started with another)
    home.write_runtime({"pid": 1, "addrs": [addr], "swarm_key_file": str(given)})
    assert client_swarm(home, None, None).key == SwarmKey.load(given)
    home.write_runtime({"pid": 1, "addrs": [addr], "swarm_key_file": None})
    assert client_swarm(home, None, None).key is None
    # a home without any key: an open client
    bare = Home(tmp_path / "bare")
    assert client_swarm(bare, addr, None) == SwarmMembership(None, None)
    runtime = json.loads(home.runtime_file.read_text())
    assert runtime["swarm_key_file"] is None


def test_refusal_messages_are_one_line_and_say_what_to_do() -> None:
    addr = "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWAaaa"
    key = SwarmKey(b"\x02" * 32)
    keyed = SwarmMembership(key, Path("/h/swarm.key"))
    opened = SwarmMembership(None, None)
    for reason in (OTHER_KEY, CLOSED):
        text = explain_refusal(addr, reason, keyed)
        assert text.startswith(f"the node at {addr} is in another swarm ({reason})")
        assert f"/h/swarm.key (fingerprint {key.fingerprint})" in text
        assert text.endswith("pass --swarm-key FILE with the key of the node's swarm")
    assert "is in an open swarm" in explain_refusal(addr, NO_KEY, keyed)
    text = explain_refusal(addr, KEYED_PEER, opened)
    assert text == (
        f"the node at {addr} is in a private swarm and this client has no swarm key: "
        "pass --swarm-key FILE with the swarm.key of the node's swarm"
    )
    assert "it may be in a private swarm" in explain_refusal(addr, CLOSED, opened)
    for reason in (OTHER_KEY, CLOSED, NO_KEY, KEYED_PEER):
        for swarm in (keyed, opened):
            assert "\n" not in explain_refusal(addr, reason, swarm)
