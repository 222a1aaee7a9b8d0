"""Discovery messages: a node's card and the peers it knows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, StringConstraints

from protocols.versioning import since
from protocols.wire import MAX_ID_LEN, MessageCodec, WireModel

PROTOCOL_ID = "/hivemesh/discovery/0.3.0"
LEGACY_PROTOCOL_IDS = ("/hivemesh/discovery/0.2.0", "/hivemesh/discovery/0.1.0")
"""Older minor versions a node still serves (docs/protocols.md §3.1)."""

MAX_TOOLS = 1024
MAX_ADDRS = 32
MAX_PEERS = 256
MAX_TAGS = 16
MAX_RESOURCES = 8
MAX_PACKAGES = 64
MAX_REQUIREMENT_LEN = 200
MAX_ADDR_RECORD_BYTES = 4096
MAX_ADDR_RECORD_LEN = 4 * ((MAX_ADDR_RECORD_BYTES + 2) // 3)  # its base64 text

_ADDR_RECORD_DOC = (
    "the node's signed address record: a libp2p signed envelope (domain "
    "'libp2p-peer-record') holding a peer record, base64 (RFC 4648, padded)"
)


class ToolCard(WireModel):
    name: str = Field(max_length=MAX_ID_LEN)
    version: str = Field(max_length=64)
    description: str = Field(default="", max_length=4096)
    input_schema: dict[str, Any] = Field(default_factory=dict)
    output_schema: dict[str, Any] = Field(default_factory=dict)
    deterministic: bool = Field(
        default=False,
        description="equal arguments always give equal outputs (steps may be replicated)",
        json_schema_extra=since("0.2.0"),
    )
    idempotent: bool = Field(
        default=False,
        description="a repeated call (same arguments and idempotency key) has the effect of "
        "one: a step of it may be retried after a failure midway",
        json_schema_extra=since("0.3.0"),
    )
    tags: list[Annotated[str, StringConstraints(max_length=32)]] = Field(
        default_factory=list, max_length=MAX_TAGS, json_schema_extra=since("0.3.0")
    )
    resources: dict[Annotated[str, StringConstraints(max_length=64)], float] = Field(
        default_factory=dict,
        max_length=MAX_RESOURCES,
        description="what one call needs from Ray, e.g. {'num_cpus': 1}",
        json_schema_extra=since("0.3.0"),
    )


class InstallInfo(WireModel):
    """Whether the node installs packages that steps name (``tools.install``), and the
    requirements it has installed already (placement prefers a node that has)."""

    allowed: bool = False
    packages: list[Annotated[str, StringConstraints(max_length=MAX_REQUIREMENT_LEN)]] = Field(
        default_factory=list, max_length=MAX_PACKAGES
    )


class LoadInfo(WireModel):
    """What the node says about its load: a hint, capped by what its peers measured."""

    running: StrictInt = Field(default=0, ge=0)
    capacity: StrictInt = Field(default=1, ge=0)


class NodeCard(WireModel):
    """What a node says about itself. Accepted only from the node it describes."""

    peer_id: str = Field(max_length=MAX_ID_LEN)
    addrs: list[str] = Field(default_factory=list, max_length=MAX_ADDRS)
    version: str = Field(max_length=64)
    tools: list[ToolCard] = Field(default_factory=list, max_length=MAX_TOOLS)
    load: LoadInfo = Field(default_factory=LoadInfo)
    ttl_s: float = Field(default=60.0, gt=0, le=86400)
    addr_record: str | None = Field(
        default=None,
        max_length=MAX_ADDR_RECORD_LEN,
        description=_ADDR_RECORD_DOC,
        json_schema_extra=since("0.2.0"),
    )
    installs: InstallInfo | None = Field(
        default=None,
        description="tools installed per step: allowed here, and already installed; absent: "
        "a node older than 0.3.0 (it also speaks handoff 1.0.0 only)",
        json_schema_extra=since("0.3.0"),
    )


class PeerRef(WireModel):
    """A peer the sender knows. Only the addresses inside ``addr_record`` may be dialled."""

    peer_id: str = Field(max_length=MAX_ID_LEN)
    addrs: list[str] = Field(default_factory=list, max_length=MAX_ADDRS)
    addr_record: str | None = Field(
        default=None,
        max_length=MAX_ADDR_RECORD_LEN,
        description=_ADDR_RECORD_DOC + ", relayed verbatim from the peer's own card",
        json_schema_extra=since("0.2.0"),
    )


class Hello(WireModel):
    """Sent by the opener; the responder answers with its own ``hello``."""

    type: Literal["hello"] = "hello"
    card: NodeCard
    peers: list[PeerRef] = Field(default_factory=list, max_length=MAX_PEERS)


CODEC: MessageCodec[Hello] = MessageCodec("discovery", [Hello])
