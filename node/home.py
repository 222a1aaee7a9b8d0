"""The home folder: identity keys, config, journal and the running node's addresses."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.identity_utils import load_identity, save_identity
from libp2p.peer.id import ID

from node.config import DEFAULT_CONFIG_YAML
from node.errors import HomeError

NODE_KEY = "node.key"
CLIENT_KEY = "client.key"
CONFIG_FILE = "config.yaml"
JOURNAL_FILE = "journal.db"
RUNTIME_FILE = "node.json"


def default_home() -> Path:
    env = os.environ.get("HIVEMESH_HOME")
    return Path(env).expanduser() if env else Path.home() / ".hivemesh"


@dataclass(frozen=True)
class Home:
    path: Path

    @property
    def node_key(self) -> Path:
        return self.path / NODE_KEY

    @property
    def client_key(self) -> Path:
        return self.path / CLIENT_KEY

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL_FILE

    @property
    def runtime_file(self) -> Path:
        return self.path / RUNTIME_FILE

    def init(self) -> tuple[bool, str]:
        """Create keys and a default config where missing. Returns (created, peer id)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
        except OSError as exc:
            raise HomeError(f"cannot create home folder {self.path}: {exc.strerror}") from None
        created = False
        if not self.node_key.exists():
            save_identity(create_new_key_pair(), self.node_key)
            created = True
        if not self.client_key.exists():
            save_identity(create_new_key_pair(), self.client_key)
        if not self.config_file.exists():
            self.config_file.write_text(DEFAULT_CONFIG_YAML)
        return created, peer_id_of(self.load_node_key())

    def load_node_key(self) -> KeyPair:
        return _load_key(self.node_key, "node")

    def load_client_key(self, *, create: bool = False) -> KeyPair:
        if create and not self.client_key.exists():
            self.path.mkdir(parents=True, exist_ok=True)
            save_identity(create_new_key_pair(), self.client_key)
        return _load_key(self.client_key, "client")

    def write_runtime(self, info: dict[str, Any]) -> None:
        tmp = self.runtime_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        os.replace(tmp, self.runtime_file)

    def read_runtime(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.runtime_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise HomeError(f"cannot read {self.runtime_file}: {exc}") from None
        return data if isinstance(data, dict) else None

    def clear_runtime(self, pid: int) -> None:
        info = self.read_runtime()
        if info is not None and info.get("pid") == pid:
            self.runtime_file.unlink(missing_ok=True)


def _load_key(path: Path, what: str) -> KeyPair:
    if not path.exists():
        raise HomeError(f"no {what} key at {path}: run 'hivemesh init --home {path.parent}' first")
    try:
        return load_identity(path)
    except Exception as exc:  # foreign parser errors: translate once, here
        raise HomeError(f"cannot load {what} key {path}: {exc}") from None


def peer_id_of(key: KeyPair) -> str:
    return str(ID.from_pubkey(key.public_key))
