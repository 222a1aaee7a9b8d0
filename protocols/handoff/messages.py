"""Handoff messages: offer → accept|reject → heartbeat* → result|failed|canceled → ack.

The delegator may send ``cancel`` after its offer (on the same stream), or as the first and
only message of a fresh stream; the latter is answered with ``canceled`` or ``not_canceled``.
After a ``result`` or ``failed`` the delegator acknowledges it with ``ack`` (the delegatee may
then forget the stored outcome). Version 1.0.0 added epochs on the final messages, receipts,
``ack``, and the quota reject codes; 1.1.0 the offer's ``package`` and ``parameters`` and
the reject code ``installs_not_allowed``; 1.2.0 no message, but streams that carry one
exchange after another and a final message that implies ``accept``; see docs/protocols.md §9.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictInt, StringConstraints

from protocols.versioning import since
from protocols.wire import MAX_ID_LEN, MessageCodec, WireModel

PROTOCOL_ID = "/hivemesh/handoff/1.2.0"
LEGACY_PROTOCOL_IDS = ("/hivemesh/handoff/1.1.0", "/hivemesh/handoff/1.0.0")
"""Older minor versions a node still serves (an older delegator's offers have no 1.1.0
members, and its streams carry one exchange); a delegator opens the newest, and an older one
on a new stream when the peer refuses it (docs/protocols.md §3.1)."""
SESSION_VERSION = (1, 2, 0)
"""From this version on a stream carries one exchange after another (docs/protocols.md §9.1):
after an exchange ends, the delegator may send the next ``offer`` (or ``cancel``) on it, and
the delegatee may send a quick step's final message without an ``accept`` before it."""

RejectCode = Literal[
    "no_such_tool",
    "overloaded",
    "quota_exceeded",
    "limit_exceeded",
    "not_authorised",
    "invalid",
    "hop_limit",
    "superseded",
    "installs_not_allowed",
]
FailureCode = Literal[
    "invalid_input", "tool_failed", "deadline_exceeded", "result_too_large", "internal"
]
NotCanceledCode = Literal["unknown_handoff", "finished"]

MAX_REASON_LEN = 1024
MAX_REQUIREMENT_LEN = 200
MAX_PARAMETERS = 64
MAX_EPOCH = 2**31 - 1
SHA256_HEX = r"^[0-9a-f]{64}$"


class Offer(WireModel):
    type: Literal["offer"] = "offer"
    handoff_id: str = Field(min_length=1, max_length=MAX_ID_LEN)
    workflow_id: str = Field(max_length=MAX_ID_LEN)
    step: str = Field(max_length=MAX_ID_LEN)
    tool: str = Field(min_length=1, max_length=MAX_ID_LEN)
    version: str | None = Field(default=None, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)
    deadline_ms: StrictInt = Field(gt=0, le=7 * 24 * 3600 * 1000)
    hops: StrictInt = Field(default=0, ge=0)
    epoch: StrictInt = Field(default=0, ge=0, le=MAX_EPOCH)
    package: str | None = Field(
        default=None,
        max_length=MAX_REQUIREMENT_LEN,
        description="a pip requirement installed for the step; 'tool' is a tool of it, or the "
        "package's name for its own tool",
        json_schema_extra=since("1.1.0"),
    )
    parameters: dict[Annotated[str, StringConstraints(max_length=128)], str] | None = Field(
        default=None,
        max_length=MAX_PARAMETERS,
        description="environment variables of the step's process",
        json_schema_extra=since("1.1.0"),
    )


class Accept(WireModel):
    type: Literal["accept"] = "accept"
    handoff_id: str = Field(max_length=MAX_ID_LEN)
    epoch: StrictInt = Field(ge=0, le=MAX_EPOCH)


class Reject(WireModel):
    type: Literal["reject"] = "reject"
    handoff_id: str = Field(max_length=MAX_ID_LEN)
    code: RejectCode
    message: str = Field(max_length=4096)
    retry_after_ms: StrictInt | None = Field(default=None, ge=0, le=24 * 3600 * 1000)
    epoch: StrictInt | None = Field(
        default=None, ge=0, le=MAX_EPOCH, description="with 'superseded': the current epoch"
    )


class Heartbeat(WireModel):
    type: Literal["heartbeat"] = "heartbeat"
    handoff_id: str = Field(max_length=MAX_ID_LEN)
    elapsed_ms: StrictInt = Field(ge=0)


class Receipt(WireModel):
    """What the delegatee signs about a result (docs/protocols.md §9.12). The signed bytes
    are the canonical JSON of :func:`protocols.handoff.receipt.receipt_payload`."""

    tool_version: str = Field(max_length=64)
    args_sha256: str = Field(pattern=SHA256_HEX)
    outputs_sha256: str = Field(pattern=SHA256_HEX)
    signature: str = Field(min_length=1, max_length=512, description="base64 Ed25519 signature")


class StepResult(WireModel):
    type: Literal["result"] = "result"
    handoff_id: str = Field(max_length=MAX_ID_LEN)
    epoch: StrictInt = Field(ge=0, le=MAX_EPOCH)
    outputs: dict[str, Any]
    duration_ms: StrictInt = Field(ge=0)
    receipt: Receipt


class StepFailed(WireModel):
    type: Literal["failed"] = "failed"
    handoff_id: str = Field(max_length=MAX_ID_LEN)
    epoch: StrictInt = Field(ge=0, le=MAX_EPOCH)
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
    epoch: StrictInt = Field(ge=0, le=MAX_EPOCH)
    message: str = Field(max_length=4096)


class NotCanceled(WireModel):
    """Final answer to a ``cancel`` on a fresh stream that changed nothing."""

    type: Literal["not_canceled"] = "not_canceled"
    handoff_id: str = Field(max_length=MAX_ID_LEN)
    code: NotCanceledCode
    message: str = Field(max_length=4096)


class Ack(WireModel):
    """Delegator → delegatee, after a ``result`` or ``failed``: the outcome is recorded;
    the delegatee may forget it."""

    type: Literal["ack"] = "ack"
    handoff_id: str = Field(min_length=1, max_length=MAX_ID_LEN)
    epoch: StrictInt = Field(ge=0, le=MAX_EPOCH)


HandoffMessage = (
    Offer
    | Accept
    | Reject
    | Heartbeat
    | StepResult
    | StepFailed
    | Cancel
    | Canceled
    | NotCanceled
    | Ack
)

CODEC: MessageCodec[HandoffMessage] = MessageCodec(
    "handoff",
    [Offer, Accept, Reject, Heartbeat, StepResult, StepFailed, Cancel, Canceled, NotCanceled, Ack],
)
