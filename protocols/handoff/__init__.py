"""``/hivemesh/handoff/1.2.0`` (and 1.1.0, 1.0.0): delegate steps to a peer.

See docs/protocols.md for the wire specification; :mod:`protocols.handoff.machine` holds the
protocol's rules (which message may follow which) without I/O.
"""

from protocols.handoff.messages import (
    CODEC,
    LEGACY_PROTOCOL_IDS,
    PROTOCOL_ID,
    SESSION_VERSION,
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
    "SESSION_VERSION",
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
