"""What a delegated step can end in, besides a result.

::

    HandoffError                  a delegated step did not produce a (trusted) result
    ├── HandoffRejectedError      the peer refused the offer (``code``: overloaded, …); not run
    ├── HandoffFailedError        the peer ran the step and it failed (``code``)
    │   └── HandoffCanceledError  the step was stopped by a cancel and has no result
    ├── HandoffLostError          the exchange ended before a final message: outcome unknown
    │   ├── HandoffGaveUpError    … because the peer was silent or too slow (a cancel was sent)
    │   └── HandoffProtocolError  … because the peer broke the protocol (garbage, wrong epoch)
    ├── InvalidReceiptError       a result whose signed receipt does not check out
    └── InvalidResultError        a result that fails the tool's output schema
"""

from __future__ import annotations

from node.errors import NodeError


class HandoffError(NodeError):
    """A delegated step did not produce a result."""

    def __init__(self, peer: str, message: str) -> None:
        super().__init__(message)
        self.peer = peer
        self.message = message


class HandoffRejectedError(HandoffError):
    """The peer refused the offer (``code`` from the wire: no_such_tool, overloaded, …).

    ``retry_after_s`` is the peer's hint for overloaded/quota rejections; ``epoch`` is the
    peer's current attempt for ``superseded``."""

    def __init__(
        self,
        peer: str,
        code: str,
        message: str,
        *,
        retry_after_s: float | None = None,
        epoch: int | None = None,
    ) -> None:
        super().__init__(peer, f"peer {peer} rejected the step ({code}): {message}")
        self.code = code
        self.retry_after_s = retry_after_s
        self.epoch = epoch


class HandoffFailedError(HandoffError):
    """The peer ran the step and it failed (``code``: tool_failed, invalid_input, …)."""

    def __init__(self, peer: str, code: str, message: str) -> None:
        super().__init__(peer, message)
        self.code = code


class HandoffCanceledError(HandoffFailedError):
    """The peer answered ``canceled``: the step was stopped by a cancel and has no result."""

    def __init__(self, peer: str, message: str) -> None:
        super().__init__(peer, "canceled", message)


class HandoffLostError(HandoffError):
    """The stream ended or went silent before a final message: outcome unknown."""


class HandoffGaveUpError(HandoffLostError):
    """The delegator gave up on a silent or too slow peer and sent it a ``cancel`` (best
    effort): asking again means a new attempt, not a re-attach to that one."""


class HandoffProtocolError(HandoffLostError):
    """The peer broke the handoff protocol (a message out of turn, about another handoff or
    attempt, or garbage): outcome unknown, and the peer is not to be trusted for a while."""


class InvalidReceiptError(HandoffError):
    """The peer's result came with a receipt that is not its signature over what was offered
    and what it returned: the result is not accepted."""


class InvalidResultError(HandoffError):
    """A peer's result for a step does not match the tool's output schema."""
