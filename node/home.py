"""The home folder: identity keys, config, journal and the running node's addresses."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.errors import HomeError, SwarmKeyError
from node.home_lock import HomeLock
from node.swarmkey import SwarmKey

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair

    from node.config import SwarmConfig
    from node.p2p.listen import ListenSockets

NODE_KEY = "node.key"
CLIENT_KEY = "client.key"
CONFIG_FILE = "config.yaml"
JOURNAL_FILE = "journal.db"
RUNTIME_FILE = "node.json"
SWARM_KEY = "swarm.key"
LISTEN_FILE = "listen.json"  # the ports the node listened on last time (Home.bind_listen)
PEERS_FILE = "peers.json"  # the peers it knew (node.peerstore)
CONTROL_SOCKET = "control.sock"  # the local control endpoint (node.control_socket)
STARTS_FILE = "starts"  # how many times the node started (node.workflow_schedule)
MAX_LISTEN_FILE_BYTES = 64 * 1024
# What the workflow engine keeps in the home (workflows.engine.storage.Storage): checked before a
# node starts, so that a home the node cannot write fails in milliseconds, not after Ray.
WORKFLOWS_DB = "workflows.db"
OBJECTS_DIR = "objects"
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def default_home() -> Path:
    env = os.environ.get("HIVEMESH_HOME")
    return Path(env).expanduser() if env else Path.home() / ".hivemesh"


@dataclass(frozen=True)
class SwarmMembership:
    """Which swarm a home's node belongs to: ``key`` None means an open swarm."""

    key: SwarmKey | None
    key_file: Path | None
    created: bool = False  # the key was created just now (a new swarm)

    def describe(self) -> str:
        if self.key is None:
            return "OPEN (no swarm key: anyone who can reach the node may connect)"
        return f"private (key {self.key_file}, fingerprint {self.key.fingerprint})"


@dataclass(frozen=True)
class InitReport:
    created: bool  # a new node identity
    peer_id: str
    swarm: SwarmMembership
    swarm_note: str  # what init did about the swarm, for the user


@dataclass(frozen=True)
class NodeClaim:
    """What :meth:`Home.claim_for_node` holds and found: the home's lock (keep it for the
    node's lifetime) and the stale ``node.json`` it removed, if any."""

    lock: HomeLock
    stale_runtime: dict[str, Any] | None = None

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> NodeClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


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

    @property
    def listen_file(self) -> Path:
        return self.path / LISTEN_FILE

    @property
    def peers_file(self) -> Path:
        return self.path / PEERS_FILE

    @property
    def swarm_key(self) -> Path:
        """Where the home's swarm key lives unless the config says otherwise."""
        return self.path / SWARM_KEY

    def init(self, *, join: Path | None = None, open_swarm: bool = False) -> InitReport:
        """Create keys and a default config where missing, and make the home a member of a
        swarm: a new one (a new ``swarm.key``), the one whose key file is ``join`` (copied
        in, mode 0600), or an open one (``open_swarm``: no key, recorded in the config)."""
        if join is not None and open_swarm:
            raise HomeError("a swarm is either joined with a key or open, not both")
        joined = SwarmKey.load(join) if join is not None else None  # before writing anything
        created = self.init_identity(open_swarm=open_swarm)
        if open_swarm:
            config = self._file_swarm_config()
            path = self.swarm_key_path(config)
            if not config.open and path.exists():
                raise HomeError(
                    f"{self.path} already belongs to a private swarm ({path}); to make it "
                    f"open, remove that file and set swarm.open: true in {self.config_file}"
                )
            self._record_open_swarm()
        membership, note = self._init_swarm(joined, join, open_swarm)
        return InitReport(created, peer_id_of(self.load_node_key()), membership, note)

    def init_identity(self, *, open_swarm: bool = False) -> bool:
        """Create the folder, the node and client keys and a default config where missing
        (not the swarm key). Returns whether a new node identity was made."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            os.chmod(self.path, 0o700)
        except OSError as exc:
            raise HomeError(f"cannot create home folder {self.path}: {exc.strerror}") from None
        created = False
        if not self.node_key.exists():
            _new_key(self.node_key)
            created = True
        if not self.client_key.exists():
            _new_key(self.client_key)
        if not self.config_file.exists():
            from node.config import default_config_yaml

            self.config_file.write_text(default_config_yaml(open_swarm=open_swarm))
        return created

    def _file_swarm_config(self) -> SwarmConfig:
        """The swarm section of the home's config file (defaults if it has none)."""
        # (node.config is imported where it is used: the CLI's fast path reads no config)
        from node.config import SwarmConfig, read_config_file

        if not self.config_file.exists():
            return SwarmConfig()
        section = read_config_file(self.config_file).get("swarm") or {}
        try:
            return SwarmConfig.model_validate(section)
        except ValueError as exc:
            raise HomeError(f"{self.config_file}: invalid swarm section: {exc}") from None

    def _record_open_swarm(self) -> None:
        from node.config import read_config_file

        data = read_config_file(self.config_file)
        swarm = data.get("swarm")
        if isinstance(swarm, dict) and swarm.get("open") is True:
            return
        if swarm is None:  # an older config without the section: add it
            with open(self.config_file, "a") as f:
                f.write("\nswarm:\n  open: true  # no swarm key: anyone may connect\n")
            return
        raise HomeError(
            f"{self.config_file} has a swarm section without open: true; "
            "set swarm.open: true there to make this node's swarm open"
        )

    def _init_swarm(
        self, joined: SwarmKey | None, join: Path | None, open_swarm: bool
    ) -> tuple[SwarmMembership, str]:
        config = self._file_swarm_config()
        path = self.swarm_key_path(config)
        if config.open:
            if joined is not None:
                raise HomeError(
                    f"{self.path} is configured as an open swarm (swarm.open: true in "
                    f"{self.config_file}); set it to false to join a private swarm"
                )
            return SwarmMembership(None, None), "open swarm: no swarm key (swarm.open: true)"
        if path.exists():
            current = SwarmKey.load(path)
            if joined is not None and joined != current:
                raise HomeError(
                    f"{self.path} already belongs to another swarm ({path}, fingerprint "
                    f"{current.fingerprint}); remove that file first to join the swarm of {join}"
                )
            return SwarmMembership(current, path), f"swarm key: {path} (kept)"
        if joined is not None:
            joined.write_new(path)
            return SwarmMembership(joined, path), f"swarm key: {path} (copied from {join})"
        key = SwarmKey.generate()
        key.write_new(path)
        return SwarmMembership(key, path, created=True), f"swarm key: {path} (a new swarm)"

    def swarm_key_path(self, config: SwarmConfig) -> Path:
        """The key file of ``config`` (relative paths are relative to the home)."""
        if config.key_file is None:
            return self.swarm_key
        return self.path / config.key_file.expanduser()

    def membership(self, config: SwarmConfig, *, create: bool = False) -> SwarmMembership:
        """The swarm ``config`` puts this home's node in. Raises SwarmKeyError if the key
        file is missing or invalid; with ``create``, a missing key at the default place
        is created instead (a new swarm), never one at a configured place."""
        if config.open:
            return SwarmMembership(None, None)
        path = self.swarm_key_path(config)
        if create and config.key_file is None and not path.exists():
            self.path.mkdir(parents=True, exist_ok=True)
            key = SwarmKey.generate()
            try:
                key.write_new(path)
            except SwarmKeyError:  # created meanwhile by someone else: use theirs
                return SwarmMembership(SwarmKey.load(path), path)
            return SwarmMembership(key, path, created=True)
        if config.key_file is None and not path.exists():
            raise SwarmKeyError(
                f"no swarm key at {path}: run 'hivemesh init --home {self.path}' (a new "
                f"swarm) or 'hivemesh init --home {self.path} --swarm-key FILE' (join one)"
            )
        return SwarmMembership(SwarmKey.load(path), path)

    def load_node_key(self) -> KeyPair:
        return _load_key(self.node_key, "node")

    def load_client_key(self, *, create: bool = False) -> KeyPair:
        if create and not self.client_key.exists():
            self.path.mkdir(parents=True, exist_ok=True)
            _new_key(self.client_key)
        return _load_key(self.client_key, "client")

    def claim_for_node(self) -> NodeClaim:
        """Make the home ready for a node about to start, in milliseconds and before Ray:
        create the folder if missing, check that it is writable and that the journal files
        in it can be opened (:class:`HomeError`), take its lock (:class:`HomeLockedError` if
        a node runs from it), and remove a ``node.json`` and a ``control.sock`` left by a
        node that is gone (the lock was free, so whatever pid it names is not a node of this
        home)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise HomeError(f"cannot create home folder {self.path}: {_why(exc)}") from None
        if not self.path.is_dir():
            raise HomeError(f"home {self.path} is not a folder: use another --home")
        self.check_writable()
        lock = HomeLock(self.path)
        lock.acquire()
        try:
            stale: dict[str, Any] | None = None
            try:
                stale = self.read_runtime()
            except HomeError:
                stale = {}  # unreadable: stale all the same
            leftovers = [self.runtime_file, self.runtime_file.with_suffix(".tmp")]
            sock = self.path / CONTROL_SOCKET
            if sock.is_socket():  # (anything else there is left for the node to report)
                leftovers.append(sock)
            for leftover in leftovers:
                try:
                    leftover.unlink(missing_ok=True)
                except OSError as exc:
                    raise HomeError(f"cannot remove the stale {leftover}: {_why(exc)}") from None
            self.check_journal_files()
        except BaseException:
            lock.release()
            raise
        return NodeClaim(lock, stale)

    def check_writable(self) -> None:
        """Raise :class:`HomeError` (one line) unless a file can be created in the home."""
        try:
            fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=self.path)
        except OSError as exc:
            raise HomeError(
                f"home {self.path} is not writable ({_why(exc)}): a node keeps its journal "
                "there; fix its permissions or use another --home"
            ) from None
        os.close(fd)
        os.unlink(probe)

    def check_journal_files(self) -> None:
        """Raise :class:`HomeError` (one line) if a journal file of the home (or its object
        folder) exists but cannot be opened for writing, e.g. a folder where a file belongs."""
        for name in (JOURNAL_FILE, WORKFLOWS_DB):
            for path in [self.path / name] + [self.path / (name + s) for s in _SQLITE_SIDE_FILES]:
                _check_writable_file(path)
        objects = self.path / OBJECTS_DIR
        if objects.exists() or objects.is_symlink():
            if not objects.is_dir():
                raise HomeError(
                    f"{objects} is not a folder: the node keeps workflow results there; "
                    "move it away or use another --home"
                )
            if not os.access(objects, os.W_OK | os.X_OK):
                raise HomeError(
                    f"{objects} is not writable: the node keeps workflow results there; "
                    "fix its permissions or use another --home"
                )

    def bind_listen(self, listen: list[str], *, remember: bool = True) -> ListenSockets:
        """Bind the TCP listen sockets of ``listen`` (ListenError if one cannot be had).
        With ``remember``, an address with port 0 gets the port it had at the node's last
        start (``listen.json``) when that port is free; the result's ``notes`` say when it
        was not, or when the file could not be used. An explicit port is always taken as
        given. :meth:`remember_ports` records the ports for the next start."""
        from node.p2p.listen import ListenSockets

        prefer: dict[str, int] = {}
        notes: list[str] = []
        if remember:
            try:
                prefer = self.read_listen_ports()
            except HomeError as exc:
                notes.append(f"{exc}; ignored it (the node listens on new ports)")
        sockets = ListenSockets.bind(listen, prefer=prefer)
        sockets.notes[:0] = notes
        return sockets

    def read_listen_ports(self) -> dict[str, int]:
        """Listen address → the port it got last time. {} if there is no record; HomeError
        (one line) if the file is unreadable, too large or not what this node writes."""
        raw = read_bounded(self.listen_file, MAX_LISTEN_FILE_BYTES)
        if raw is None:
            return {}
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise HomeError(f"{self.listen_file} is not valid JSON") from None
        ports = data.get("ports") if isinstance(data, dict) else None
        if not isinstance(ports, dict) or not all(
            isinstance(k, str) and type(v) is int and 0 < v <= 65535 for k, v in ports.items()
        ):
            raise HomeError(f"{self.listen_file} does not map listen addresses to ports")
        return dict(ports)

    def remember_ports(self, ports: dict[str, int]) -> None:
        """Record the ports the node listens on (atomically); HomeError if it cannot."""
        write_atomic(self.listen_file, json.dumps({"version": 1, "ports": ports}).encode())

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


def read_bounded(path: Path, limit: int) -> bytes | None:
    """The content of the regular file ``path`` (None if it does not exist). HomeError (one
    line) if it cannot be read, is larger than ``limit`` bytes, or is not a regular file (a
    FIFO or a device there would block the start or never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HomeError(f"cannot read {path}: {_why(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise HomeError(f"{path} is not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise HomeError(f"cannot read {path}: {_why(exc)}") from None
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise HomeError(f"{path} is larger than {limit} bytes")
    return raw


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600) so that a reader, or the file after a
    crash, is either the old content or the new one. HomeError (one line) if it cannot."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise HomeError(f"cannot write {path}: {_why(exc)}") from None


def _check_writable_file(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise HomeError(f"cannot inspect {path}: {_why(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise HomeError(
            f"{path} is a folder, not a journal file: move it away or use another --home"
        )
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise HomeError(
            f"cannot open the journal file {path} for writing ({_why(exc)}): fix its "
            "permissions or use another --home"
        ) from None
    os.close(fd)


def _why(exc: OSError) -> str:
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return (exc.strerror or str(exc)).lower()


# libp2p is imported where keys are made or read: importing it costs about a second, which
# commands that need no key (``--help``) should not pay.


def _new_key(path: Path) -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.identity_utils import save_identity

    save_identity(create_new_key_pair(), path)


def _load_key(path: Path, what: str) -> KeyPair:
    from libp2p.identity_utils import load_identity

    if not path.exists():
        raise HomeError(f"no {what} key at {path}: run 'hivemesh init --home {path.parent}' first")
    try:
        return load_identity(path)
    except Exception as exc:  # foreign parser errors: translate once, here
        raise HomeError(f"cannot load {what} key {path}: {exc}") from None


def peer_id_of(key: KeyPair) -> str:
    from libp2p.peer.id import ID

    return str(ID.from_pubkey(key.public_key))
