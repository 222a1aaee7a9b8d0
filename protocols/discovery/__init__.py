"""``/hivemesh/discovery/0.3.0`` (and 0.2.0, 0.1.0): node cards and peer exchange.

See docs/protocols.md for the wire specification.
"""

from protocols.discovery.messages import (
    CODEC,
    LEGACY_PROTOCOL_IDS,
    MAX_PACKAGES,
    PROTOCOL_ID,
    Hello,
    InstallInfo,
    LoadInfo,
    NodeCard,
    PeerRef,
    ToolCard,
)

__all__ = [
    "CODEC",
    "LEGACY_PROTOCOL_IDS",
    "MAX_PACKAGES",
    "PROTOCOL_ID",
    "Hello",
    "InstallInfo",
    "LoadInfo",
    "NodeCard",
    "PeerRef",
    "ToolCard",
]
