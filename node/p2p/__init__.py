"""The one adapter between hivemesh and py-libp2p 0.8.1.

The rest of the node imports from here only; libp2p itself stays inside this package.
"""

from node.p2p.host import (
    ConnectionListener,
    P2PHost,
    P2PStream,
    StreamHandler,
    quiet_libp2p_logging,
    split_p2p_addr,
    valid_peer_id,
)

__all__ = [
    "ConnectionListener",
    "P2PHost",
    "P2PStream",
    "StreamHandler",
    "quiet_libp2p_logging",
    "split_p2p_addr",
    "valid_peer_id",
]
