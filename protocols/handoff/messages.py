"""Handoff messages: offer → accept|reject → heartbeat* → result|failed|canceled.

The delegator may send ``cancel`` after its offer (on the same stream), or as the first and
only message of a fresh stream; the latter is answered with ``canceled`` or ``not_canceled``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from protocols.wire import MAX_ID_LEN, MessageCodec, WireModel

PROTOCOL_ID = "/hivemesh/handoff/0.1.0"

RejectCode = Literal["no_such_tool", "overloaded", "not_authorised", "invalid", "hop_limit"]
FailureCode = Literal["invalid_input", "tool_failed", "deadline_exceeded", "internal"]
NotCanceledCode = Literal["unknown_handoff", "finished"]

MAX_REASON_LEN = 1024


class Offer(WireModel):
    type: Literal["offer"] = "offer"
    handoff_id: str = Field(min_length=1, max_length=MAX_ID_LEN)
    workflow_id: str = Field(max_length=MAX_ID_LEN)
    step: str = Field(max_length=MAX_ID_LEN)
    tool: str = Field(min_length=1, max_length=MAX_ID_LEN)
    version: str | None = Field(default=None, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)
    deadline_ms: int = Field(gt=0, le=7 * 24 * 3600 * 1000)
    hops: int = Field(default=0, ge=0)
    epoch: int = Field(default=0, ge=0)


class Accept(WireModel):
    type: Literal["accept"] = "accept"
    handoff_id: str = Field(max_length=MAX_ID_LEN)


class Reject(WireModel):
    type: Literal["reject"] = "reject"
    handoff_id: str = Field(max_length=MAX_ID_LEN)
    code: RejectCode
    message: str = Field(max_length=4096)


class Heartbeat(WireModel):
    type: Literal["heartbeat"] = "heartbeat"
    handoff_id: str = Field(max_length=MAX_ID_LEN)
    elapsed_ms: int = Field(ge=0)


class StepResult(WireModel):
    type: Literal["result"] = "result"
    handoff_id: str = Field(max_length=MAX_ID_LEN)
    outputs: dict[str, Any]
    duration_ms: int = Field(ge=0)


class StepFailed(WireModel):
    type: Literal["failed"] = "failed"
    handoff_id: str = Field(max_length=MAX_ID_LEN)
    code: FailureCode
    message: str = Field(max_length=16384)


class Cancel(WireModel):
    """Delegator → delegatee: stop the step of ``handoff_id``; its result is no longer wanted."""

    type: Literal["cancel"] = "cancel"
    handoff_id: str = Field(min_length=1, max_length=MAX_ID_LEN)
    reason: str = Field(default="", max_length=MAX_REASON_LEN)


class Canceled(WireModel):
    """Final: a ``cancel`` (now or earlier) stopped the step; it will not produce a result."""

    type: Literal["canceled"] = "canceled"
    handoff_id: str = Field(max_length=MAX_ID_LEN)
    message: str = Field(max_length=4096)


class NotCanceled(WireModel):
    """Final answer to a ``cancel`` on a fresh stream that changed nothing."""

    type: Literal["not_canceled"] = "not_canceled"
    handoff_id: str = Field(max_length=MAX_ID_LEN)
    code: NotCanceledCode
    message: str = Field(max_length=4096)


HandoffMessage = (
    Offer | Accept | Reject | Heartbeat | StepResult | StepFailed | Cancel | Canceled | NotCanceled
)

CODEC: MessageCodec[HandoffMessage] = MessageCodec(
    "handoff",
    [Offer, Accept, Reject, Heartbeat, StepResult, StepFailed, Cancel, Canceled, NotCanceled],
)
