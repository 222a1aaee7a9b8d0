"""The one adapter between hivemesh and py-libp2p 0.8.1.

The rest of the node imports from here only; libp2p itself stays inside this package.
Names are imported on first use: importing libp2p costs about a second, which commands that
only bind a port or read a home should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.p2p.host import (
        ConnectionInfo,
        ConnectionListener,
        P2PHost,
        P2PStream,
        StreamHandler,
        quiet_libp2p_logging,
        split_p2p_addr,
        valid_peer_id,
    )
    from node.p2p.listen import ListenSockets

_HOME_OF = {
    "ConnectionInfo": "node.p2p.host",
    "ConnectionListener": "node.p2p.host",
    "ListenSockets": "node.p2p.listen",
    "P2PHost": "node.p2p.host",
    "P2PStream": "node.p2p.host",
    "StreamHandler": "node.p2p.host",
    "quiet_libp2p_logging": "node.p2p.host",
    "split_p2p_addr": "node.p2p.host",
    "valid_peer_id": "node.p2p.host",
}

__all__ = [
    "ConnectionInfo",
    "ConnectionListener",
    "ListenSockets",
    "P2PHost",
    "P2PStream",
    "StreamHandler",
    "quiet_libp2p_logging",
    "split_p2p_addr",
    "valid_peer_id",
]


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
