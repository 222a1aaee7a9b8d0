"""swarm.key files: the libp2p private-network format, and every way a file can be wrong."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from node.errors import ConfigError, SwarmKeyError
from node.swarmkey import SwarmKey, loosely_readable

HEX = "dffb7e3135399a8b1612b2aaca1c36a3a8ac2cd0cca51ceeb2ced87d308cac6d"
GOOD = f"/key/swarm/psk/1.0.0/\n/base16/\n{HEX}"


def test_parse_with_and_without_a_final_newline() -> None:
    for text in (GOOD, GOOD + "\n"):
        key = SwarmKey.parse(text.encode(), "swarm.key")
        assert key.secret == bytes.fromhex(HEX)


def test_upper_case_hex_is_the_same_key() -> None:
    upper = GOOD.replace(HEX, HEX.upper())
    assert SwarmKey.parse(upper.encode(), "k").secret == bytes.fromhex(HEX)


def test_file_text_round_trips_and_is_the_spec_format() -> None:
    key = SwarmKey.generate()
    text = key.file_text()
    assert text.splitlines()[:2] == ["/key/swarm/psk/1.0.0/", "/base16/"]
    assert len(text.splitlines()[2]) == 64 and text.endswith("\n")
    assert SwarmKey.parse(text.encode(), "k") == key


def test_generate_uses_the_given_randomness_and_repr_hides_the_secret() -> None:
    key = SwarmKey.generate(lambda n: b"\x07" * n)
    assert key.secret == b"\x07" * 32
    assert "07070707" not in repr(key)
    assert key.fingerprint == SwarmKey(b"\x07" * 32).fingerprint
    assert key.fingerprint != SwarmKey.generate().fingerprint
    assert len(key.fingerprint) == 16


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"", "empty file"),
        (b"\xff\xfe garbage", "not ASCII"),
        (GOOD.replace("\n", "\r\n").encode(), "Windows line endings"),
        (
            b"/key/swarm/psk/2.0.0/\n/base16/\n" + HEX.encode(),
            "first line is '/key/swarm/psk/2.0.0/'",
        ),
        (HEX.encode(), "not a swarm key file"),
        (b"/key/swarm/psk/1.0.0/\n", "incomplete"),
        (b"/key/swarm/psk/1.0.0/\n/base16/", "incomplete"),
        (
            b"/key/swarm/psk/1.0.0/\n/base64/\n3/t+MTU5mosWErKqyhw2o6isLNDMpRzusu2HfTCMrG0=",
            "only '/base16/'",
        ),
        (GOOD[:-1].encode(), "has 63 characters"),
        ((GOOD + "00").encode(), "has 66 characters"),
        (GOOD.replace(HEX[:2], "zz", 1).encode(), "not hexadecimal"),
        ((GOOD + "\n\n").encode(), "after the key on line 4"),
        ((GOOD + "\nextra").encode(), "after the key on line 4: 'extra'"),
        (("/key/swarm/psk/1.0.0/ \n/base16/\n" + HEX).encode(), "first line is"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(text: bytes, problem: str) -> None:
    with pytest.raises(SwarmKeyError) as info:
        SwarmKey.parse(text, "/h/swarm.key")
    message = str(info.value)
    assert message.startswith("/h/swarm.key: ")
    assert problem in message
    assert "\n" not in message
    assert HEX not in message  # the key itself is never echoed


def test_a_swarm_key_error_is_a_config_error() -> None:
    assert issubclass(SwarmKeyError, ConfigError)


def test_load_missing_unreadable_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SwarmKeyError, match="does not exist"):
        SwarmKey.load(tmp_path / "nope.key")
    with pytest.raises(SwarmKeyError, match="is a directory"):
        SwarmKey.load(tmp_path)
    big = tmp_path / "big.key"
    big.write_bytes(GOOD.encode() + b"\n" + b"x" * 10_000)
    with pytest.raises(SwarmKeyError, match="after the key"):
        SwarmKey.load(big)


def test_write_new_is_0600_and_never_replaces(tmp_path: Path) -> None:
    path = tmp_path / "swarm.key"
    key = SwarmKey.generate()
    key.write_new(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not loosely_readable(path)
    assert SwarmKey.load(path) == key
    with pytest.raises(SwarmKeyError, match="already exists"):
        SwarmKey.generate().write_new(path)
    assert SwarmKey.load(path) == key
    path.chmod(0o644)
    assert loosely_readable(path)


def test_a_key_must_be_32_bytes() -> None:
    with pytest.raises(SwarmKeyError, match="32 bytes"):
        SwarmKey(b"short")
