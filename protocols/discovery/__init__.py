"""``/hivemesh/discovery/0.1.0``: node cards and peer exchange.

See docs/protocols.md for the wire specification.
"""

from protocols.discovery.messages import (
    CODEC,
    PROTOCOL_ID,
    Hello,
    LoadInfo,
    NodeCard,
    PeerRef,
    ToolCard,
)

__all__ = ["CODEC", "PROTOCOL_ID", "Hello", "LoadInfo", "NodeCard", "PeerRef", "ToolCard"]
