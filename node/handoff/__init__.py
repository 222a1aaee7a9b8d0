"""The handoff protocol on the node: delegating a step to a peer (:mod:`.delegator`),
serving steps that peers delegate here (:mod:`.server`), and the journal of both
(:mod:`.journal`). The protocol's wire messages are in :mod:`protocols.handoff`."""

from node.handoff.delegator import (
    Abandon,
    HandoffOutcome,
    abandon_on_cancel,
    cancel_handoff,
    delegate,
)
from node.handoff.errors import (
    HandoffCanceledError,
    HandoffError,
    HandoffFailedError,
    HandoffGaveUpError,
    HandoffLostError,
    HandoffProtocolError,
    HandoffRejectedError,
    InvalidReceiptError,
)
from node.handoff.journal import AsyncHandoffJournal, HandoffJournal, HandoffRecord, JournalError
from node.handoff.server import HandoffServer

__all__ = [
    "Abandon",
    "AsyncHandoffJournal",
    "HandoffCanceledError",
    "HandoffError",
    "HandoffFailedError",
    "HandoffGaveUpError",
    "HandoffJournal",
    "HandoffLostError",
    "HandoffOutcome",
    "HandoffProtocolError",
    "HandoffRecord",
    "HandoffRejectedError",
    "HandoffServer",
    "InvalidReceiptError",
    "JournalError",
    "abandon_on_cancel",
    "cancel_handoff",
    "delegate",
]
