"""The handoff protocol's rules, without I/O: which message may follow which on one stream.

Each side of a stream has a small state machine, in the manner of h11: the I/O code feeds it
every message it receives (:meth:`receive`) and every message it is about to send
(:meth:`send`). A message the peer may not send now raises
:class:`HandoffViolation` (a :class:`~protocols.errors.RemoteProtocolError`: the peer broke the
protocol); a message we may not send raises :class:`~protocols.errors.LocalProtocolError` (our
bug). The tables below are the whole protocol (docs/protocols.md §9.10).

Delegator (opened the stream with an ``offer``)::

    AWAIT_DECISION --accept--> RUNNING --result|failed--> FINISHED --(send ack)--> DONE
    AWAIT_DECISION --reject--> DONE           RUNNING --canceled--> DONE
    AWAIT_DECISION|RUNNING --(send cancel)--> CANCELING --accept|heartbeat--> CANCELING
    CANCELING --reject|canceled--> DONE        CANCELING --result|failed--> FINISHED
    AWAIT_CANCEL_ANSWER (opened with a lone cancel) --canceled|not_canceled--> DONE

Delegatee::

    AWAIT_FIRST --offer--> DECIDING --(send accept)--> RUNNING --(send result|failed)--> AWAIT_ACK
    AWAIT_FIRST --cancel--> CANCEL_ANSWER --(send canceled|not_canceled)--> DONE
    DECIDING --(send reject)--> DONE     RUNNING --(send canceled)--> DONE
    AWAIT_ACK --ack--> DONE

Final messages carry the offer's ``epoch``: a final message of another epoch is a late answer
about a superseded attempt and is refused (:class:`StaleEpochError`).

Since 1.2.0 (``session=True``) the delegatee may send ``result``, ``failed`` or ``canceled`` in
place of ``accept`` (a step that finished before its decision was sent: the final message
implies the accept), and a stream carries one exchange after another: each exchange has its
own pair of machines, and the next one begins on the stream once both sides are ``DONE``.
"""

from __future__ import annotations

import enum

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.handoff.messages import (
    Accept,
    Ack,
    Cancel,
    Canceled,
    HandoffMessage,
    Heartbeat,
    NotCanceled,
    Offer,
    Reject,
    StepFailed,
    StepResult,
)


class HandoffViolation(RemoteProtocolError):
    """The peer sent a handoff message that is not allowed at this point of the exchange."""

    code = "unexpected_message"


class StaleEpochError(HandoffViolation):
    """A final message about another attempt (epoch) of the handoff than the one offered."""

    code = "stale_epoch"


class DelegatorState(enum.Enum):
    AWAIT_DECISION = "await_decision"
    RUNNING = "running"
    CANCELING = "canceling"
    AWAIT_CANCEL_ANSWER = "await_cancel_answer"
    FINISHED = "finished"  # a result or failure arrived: the delegator owes an ack
    DONE = "done"


class DelegateeState(enum.Enum):
    AWAIT_FIRST = "await_first"
    DECIDING = "deciding"
    RUNNING = "running"
    CANCEL_ANSWER = "cancel_answer"
    AWAIT_ACK = "await_ack"
    DONE = "done"


_FINAL_OF_RUN = (StepResult, StepFailed, Canceled)


class Delegator:
    """The delegator's side of one handoff stream."""

    def __init__(self, first: Offer | Cancel, *, session: bool = False) -> None:
        self.session = session  # 1.2.0 rules: a final message may take the place of accept
        self.handoff_id = first.handoff_id
        self.offer = first if isinstance(first, Offer) else None
        self.epoch = first.epoch if isinstance(first, Offer) else None
        self.state = (
            DelegatorState.AWAIT_DECISION
            if isinstance(first, Offer)
            else DelegatorState.AWAIT_CANCEL_ANSWER
        )
        self.final: HandoffMessage | None = None
        self.accepted = False

    @property
    def finished(self) -> bool:
        return self.state in (DelegatorState.FINISHED, DelegatorState.DONE)

    def receive(self, msg: HandoffMessage) -> HandoffMessage:
        """Check a message from the delegatee; returns it. Raises :class:`HandoffViolation`."""
        state = self.state
        if getattr(msg, "handoff_id", None) != self.handoff_id:
            raise HandoffViolation(f"a {msg.type!r} about another handoff than {self.handoff_id!r}")
        if state is DelegatorState.AWAIT_CANCEL_ANSWER:
            if isinstance(msg, Heartbeat):
                return msg
            if isinstance(msg, (Canceled, NotCanceled)):
                return self._end(msg, DelegatorState.DONE)
            raise HandoffViolation(f"{msg.type!r} in answer to a lone cancel")
        deciding = state in (DelegatorState.AWAIT_DECISION, DelegatorState.CANCELING)
        if deciding and not self.accepted:
            # a cancel sent before the decision does not spare the delegatee from deciding
            if isinstance(msg, Accept):
                self._check_epoch(msg.epoch, msg.type)
                self.accepted = True
                if state is DelegatorState.AWAIT_DECISION:
                    self.state = DelegatorState.RUNNING
                return msg
            if isinstance(msg, Reject):
                return self._end(msg, DelegatorState.DONE)
            if not (self.session and isinstance(msg, _FINAL_OF_RUN)):
                raise HandoffViolation(f"{msg.type!r} before 'accept' or 'reject'")
            # 1.2.0: the final message implies the accept (its epoch is checked below)
            if state is DelegatorState.AWAIT_DECISION:
                state = DelegatorState.RUNNING
        if state in (DelegatorState.RUNNING, DelegatorState.CANCELING):
            if isinstance(msg, Heartbeat):
                return msg
            if isinstance(msg, _FINAL_OF_RUN):
                self._check_epoch(msg.epoch, msg.type)
                self.accepted = True
                done = isinstance(msg, Canceled)
                return self._end(msg, DelegatorState.DONE if done else DelegatorState.FINISHED)
            raise HandoffViolation(f"{msg.type!r} while the step runs")
        raise HandoffViolation(f"{msg.type!r} after the exchange ended")

    def cancel(self, reason: str = "") -> Cancel:
        """The ``cancel`` to send on this stream (at most one, before the final message)."""
        if self.state not in (DelegatorState.AWAIT_DECISION, DelegatorState.RUNNING):
            raise LocalProtocolError(f"cannot cancel in state {self.state.value}")
        self.state = DelegatorState.CANCELING
        return Cancel(handoff_id=self.handoff_id, reason=reason)

    def ack(self) -> Ack:
        """The ``ack`` of a received ``result`` or ``failed``."""
        if self.state is not DelegatorState.FINISHED or self.epoch is None:
            raise LocalProtocolError(f"nothing to acknowledge in state {self.state.value}")
        self.state = DelegatorState.DONE
        return Ack(handoff_id=self.handoff_id, epoch=self.epoch)

    def _check_epoch(self, epoch: int, what: str) -> None:
        if epoch != self.epoch:
            raise StaleEpochError(
                f"{what!r} for epoch {epoch} of handoff {self.handoff_id!r}; the offer was "
                f"epoch {self.epoch} (a late answer about a superseded attempt)"
            )

    def _end(self, msg: HandoffMessage, state: DelegatorState) -> HandoffMessage:
        self.final = msg
        self.state = state
        return msg


class Delegatee:
    """The delegatee's side of one handoff stream."""

    def __init__(self, *, session: bool = False) -> None:
        self.session = session  # 1.2.0 rules: a final message may take the place of accept
        self.state = DelegateeState.AWAIT_FIRST
        self.first: Offer | Cancel | None = None
        self.cancel_requested: Cancel | None = None

    @property
    def handoff_id(self) -> str | None:
        return self.first.handoff_id if self.first is not None else None

    @property
    def keeps_stream(self) -> bool:
        """The exchange ended cleanly on a 1.2.0 stream: the stream carries the next one."""
        return self.session and self.state is DelegateeState.DONE

    def receive(self, msg: HandoffMessage) -> HandoffMessage | None:
        """Check a message from the delegator. Returns it, or None when it changes nothing
        (a repeated or late ``cancel``). Raises :class:`HandoffViolation`."""
        state = self.state
        if state is DelegateeState.AWAIT_FIRST:
            if isinstance(msg, (Offer, Cancel)):
                self.first = msg
                self.state = (
                    DelegateeState.DECIDING
                    if isinstance(msg, Offer)
                    else DelegateeState.CANCEL_ANSWER
                )
                return msg
            raise HandoffViolation(f"expected 'offer' or 'cancel', got {msg.type!r}")
        hid = self.handoff_id
        if state in (DelegateeState.DECIDING, DelegateeState.RUNNING, DelegateeState.AWAIT_ACK):
            if isinstance(msg, Cancel):
                if msg.handoff_id != hid:
                    raise HandoffViolation(f"a cancel on this stream must be for {hid!r}")
                if self.cancel_requested is not None or state is DelegateeState.AWAIT_ACK:
                    return None  # repeated, or crossed our final message: nothing to do
                self.cancel_requested = msg
                return msg
            if isinstance(msg, Ack) and state is DelegateeState.AWAIT_ACK:
                assert isinstance(self.first, Offer)
                if msg.handoff_id != hid or msg.epoch != self.first.epoch:
                    raise HandoffViolation(
                        f"an ack on this stream must be for {hid!r} epoch {self.first.epoch}"
                    )
                self.state = DelegateeState.DONE
                return msg
            expected = "'cancel' or 'ack'" if state is DelegateeState.AWAIT_ACK else "'cancel'"
            raise HandoffViolation(f"expected {expected} after the offer, got {msg.type!r}")
        raise HandoffViolation(f"{msg.type!r} after the exchange ended")

    def send(self, msg: HandoffMessage) -> HandoffMessage:
        """Check a message we are about to send; returns it. Raises LocalProtocolError."""
        state = self.state
        hid = self.handoff_id
        if getattr(msg, "handoff_id", None) != hid:
            raise LocalProtocolError(f"sending {msg.type!r} about another handoff than {hid!r}")
        allowed: dict[DelegateeState, tuple[type, ...]] = {
            DelegateeState.DECIDING: (Accept, Reject, *(_FINAL_OF_RUN if self.session else ())),
            DelegateeState.RUNNING: (Heartbeat, StepResult, StepFailed, Canceled),
            DelegateeState.CANCEL_ANSWER: (Heartbeat, Canceled, NotCanceled),
        }
        if not isinstance(msg, allowed.get(state, ())):
            raise LocalProtocolError(f"cannot send {msg.type!r} in state {state.value}")
        if isinstance(msg, Accept):
            self.state = DelegateeState.RUNNING
        elif isinstance(msg, (StepResult, StepFailed)):
            self.state = DelegateeState.AWAIT_ACK
        elif isinstance(msg, (Reject, Canceled, NotCanceled)):
            self.state = DelegateeState.DONE
        return msg
