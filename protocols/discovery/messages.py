"""Discovery messages: a node's card and the peers it knows."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from protocols.wire import MAX_ID_LEN, MessageCodec, WireModel

PROTOCOL_ID = "/hivemesh/discovery/0.1.0"
MAX_TOOLS = 1024
MAX_ADDRS = 32
MAX_PEERS = 256


class ToolCard(WireModel):
    name: str = Field(max_length=MAX_ID_LEN)
    version: str = Field(max_length=64)
    description: str = Field(default="", max_length=4096)
    input_schema: dict[str, Any] = Field(default_factory=dict)
    output_schema: dict[str, Any] = Field(default_factory=dict)


class LoadInfo(WireModel):
    running: int = Field(default=0, ge=0)
    capacity: int = Field(default=1, ge=0)


class NodeCard(WireModel):
    """What a node says about itself. Accepted only from the node it describes."""

    peer_id: str = Field(max_length=MAX_ID_LEN)
    addrs: list[str] = Field(default_factory=list, max_length=MAX_ADDRS)
    version: str = Field(max_length=64)
    tools: list[ToolCard] = Field(default_factory=list, max_length=MAX_TOOLS)
    load: LoadInfo = Field(default_factory=LoadInfo)
    ttl_s: float = Field(default=60.0, gt=0, le=86400)


class PeerRef(WireModel):
    peer_id: str = Field(max_length=MAX_ID_LEN)
    addrs: list[str] = Field(default_factory=list, max_length=MAX_ADDRS)


class Hello(WireModel):
    """Sent by the opener; the responder answers with its own ``hello``."""

    type: Literal["hello"] = "hello"
    card: NodeCard
    peers: list[PeerRef] = Field(default_factory=list, max_length=MAX_PEERS)


CODEC: MessageCodec[Hello] = MessageCodec("discovery", [Hello])
