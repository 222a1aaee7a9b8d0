"""``/hivemesh/handoff/1.1.0`` (and 1.0.0): delegate one step to a peer.

See docs/protocols.md for the wire specification; :mod:`protocols.handoff.machine` holds the
protocol's rules (which message may follow which) without I/O.
"""

from protocols.handoff.messages import (
    CODEC,
    LEGACY_PROTOCOL_IDS,
    PROTOCOL_ID,
    Accept,
    Ack,
    Cancel,
    Canceled,
    FailureCode,
    HandoffMessage,
    Heartbeat,
    NotCanceled,
    NotCanceledCode,
    Offer,
    Receipt,
    Reject,
    RejectCode,
    StepFailed,
    StepResult,
)

__all__ = [
    "CODEC",
    "LEGACY_PROTOCOL_IDS",
    "PROTOCOL_ID",
    "Accept",
    "Ack",
    "Cancel",
    "Canceled",
    "FailureCode",
    "HandoffMessage",
    "Heartbeat",
    "NotCanceled",
    "NotCanceledCode",
    "Offer",
    "Receipt",
    "Reject",
    "RejectCode",
    "StepFailed",
    "StepResult",
]
