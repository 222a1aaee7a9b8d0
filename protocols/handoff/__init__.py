"""``/hivemesh/handoff/0.1.0``: delegate one step to a peer.

See docs/protocols.md for the wire specification.
"""

from protocols.handoff.messages import (
    CODEC,
    PROTOCOL_ID,
    Accept,
    Cancel,
    Canceled,
    FailureCode,
    Heartbeat,
    NotCanceled,
    NotCanceledCode,
    Offer,
    Reject,
    RejectCode,
    StepFailed,
    StepResult,
)

__all__ = [
    "CODEC",
    "PROTOCOL_ID",
    "Accept",
    "Cancel",
    "Canceled",
    "FailureCode",
    "Heartbeat",
    "NotCanceled",
    "NotCanceledCode",
    "Offer",
    "Reject",
    "RejectCode",
    "StepFailed",
    "StepResult",
]
