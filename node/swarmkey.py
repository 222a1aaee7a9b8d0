"""The swarm key: the pre-shared key that makes a swarm private.

A ``swarm.key`` file is in the format of the libp2p private-network spec (the same files
go-libp2p, Kubo and js-libp2p use)::

    /key/swarm/psk/1.0.0/
    /base16/
    <64 hexadecimal characters: the 32-byte key>

with an optional final newline. Nothing else is accepted: another encoding, a missing or
extra line, Windows line endings or a key of the wrong length is a :class:`SwarmKeyError`
that names the file and the problem.

This module needs only the standard library, so the CLI can read keys without loading
libp2p.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from node.errors import SwarmKeyError

KEY_SIZE = 32
HEADER = "/key/swarm/psk/1.0.0/"
ENCODING = "/base16/"
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True)
class SwarmKey:
    """A 32-byte pre-shared swarm key. Its ``repr`` never shows the secret."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_SIZE:
            raise SwarmKeyError(f"a swarm key is {KEY_SIZE} bytes, not {len(self.secret)}")

    @classmethod
    def generate(cls, randbytes: Callable[[int], bytes] = secrets.token_bytes) -> SwarmKey:
        """A new random key: a new swarm."""
        return cls(randbytes(KEY_SIZE))

    @classmethod
    def parse(cls, data: bytes, source: str) -> SwarmKey:
        """Parse the contents of a swarm key file; ``source`` names it in errors."""
        if not data:
            raise SwarmKeyError(f"{source}: empty file, not a swarm key")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise SwarmKeyError(
                f"{source}: not a swarm key file (it is not ASCII text; expected "
                f"{HEADER!r}, {ENCODING!r} and 64 hex characters on three lines)"
            ) from None
        if "\r" in text:
            raise SwarmKeyError(
                f"{source}: Windows line endings (\\r\\n) in the swarm key; "
                "convert the file to \\n line endings"
            )
        lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
        if lines[0] != HEADER:
            raise SwarmKeyError(
                f"{source}: not a swarm key file: its first line is {_shown(lines[0])}, "
                f"expected {HEADER!r}"
            )
        if len(lines) < 3:
            raise SwarmKeyError(
                f"{source}: the swarm key is incomplete: expected {ENCODING!r} on line 2 "
                "and 64 hex characters on line 3"
            )
        if lines[1] != ENCODING:
            raise SwarmKeyError(
                f"{source}: unsupported swarm key encoding {_shown(lines[1])}: only "
                f"{ENCODING!r} (64 hex characters) is supported"
            )
        hex_key = lines[2]
        if len(hex_key) != 2 * KEY_SIZE:
            raise SwarmKeyError(
                f"{source}: the key on line 3 has {len(hex_key)} characters; a swarm key "
                f"is {2 * KEY_SIZE} hex characters (32 bytes)"
            )
        if not set(hex_key) <= _HEX:
            raise SwarmKeyError(f"{source}: the key on line 3 is not hexadecimal (0-9, a-f)")
        if len(lines) > 3:
            raise SwarmKeyError(
                f"{source}: unexpected text after the key on line 4: {_shown(lines[3])}"
            )
        return cls(bytes.fromhex(hex_key))

    @classmethod
    def load(cls, path: Path) -> SwarmKey:
        """Read and parse a swarm key file."""
        try:
            # a key file is ~96 bytes; refuse to read a huge file given by mistake
            with open(path, "rb") as f:
                data = f.read(4096)
        except FileNotFoundError:
            raise SwarmKeyError(f"swarm key file {path} does not exist") from None
        except IsADirectoryError:
            raise SwarmKeyError(f"swarm key file {path} is a directory") from None
        except OSError as exc:
            raise SwarmKeyError(f"cannot read swarm key file {path}: {exc.strerror}") from None
        return cls.parse(data, str(path))

    def file_text(self) -> str:
        """The key in the swarm key file format (lower-case hex, final newline)."""
        return f"{HEADER}\n{ENCODING}\n{self.secret.hex()}\n"

    def write_new(self, path: Path) -> None:
        """Write the key to ``path`` (mode 0600). Refuses to replace an existing file."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise SwarmKeyError(f"swarm key file {path} already exists") from None
        except OSError as exc:
            raise SwarmKeyError(f"cannot create swarm key file {path}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as f:
            f.write(self.file_text())

    @property
    def fingerprint(self) -> str:
        """A short public name for the key (16 hex characters of its SHA-256), for logs and
        for telling two keys apart without showing either."""
        return hashlib.sha256(self.secret).hexdigest()[:16]


def _shown(line: str) -> str:
    return repr(line if len(line) <= 40 else line[:40] + "…")


def loosely_readable(path: Path) -> bool:
    """Whether users other than the owner may read the key file."""
    try:
        return bool(path.stat().st_mode & 0o077)
    except OSError:
        return False
