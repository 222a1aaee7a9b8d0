"""The handoff protocol's rules as sans-I/O state machines: two machines wired together, and
every message out of turn refused with the right error."""

from __future__ import annotations

import pytest

from protocols import handoff
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.handoff.machine import (
    Delegatee,
    DelegateeState,
    Delegator,
    DelegatorState,
    HandoffViolation,
    StaleEpochError,
)

HID = "wf/step@peer"
RECEIPT = handoff.Receipt(
    tool_version="1.0.0", args_sha256="a" * 64, outputs_sha256="b" * 64, signature="c2ln"
)


def offer(epoch: int = 3) -> handoff.Offer:
    return handoff.Offer(
        handoff_id=HID, workflow_id="wf", step="step", tool="t.x", deadline_ms=1000, epoch=epoch
    )


def result(epoch: int = 3) -> handoff.StepResult:
    return handoff.StepResult(
        handoff_id=HID, epoch=epoch, outputs={"r": 1}, duration_ms=5, receipt=RECEIPT
    )


def relay(sender: Delegatee, receiver: Delegator, msg: handoff.HandoffMessage) -> None:
    receiver.receive(sender.send(msg))


def test_a_whole_exchange_through_both_machines() -> None:
    o = offer()
    delegator, delegatee = Delegator(o), Delegatee()
    assert delegatee.receive(o) is o and delegatee.state is DelegateeState.DECIDING
    relay(delegatee, delegator, handoff.Accept(handoff_id=HID, epoch=3))
    assert (delegator.state, delegatee.state) == (DelegatorState.RUNNING, DelegateeState.RUNNING)
    relay(delegatee, delegator, handoff.Heartbeat(handoff_id=HID, elapsed_ms=1000))
    relay(delegatee, delegator, result())
    assert delegator.state is DelegatorState.FINISHED and delegator.final == result()
    assert delegatee.state is DelegateeState.AWAIT_ACK
    ack = delegator.ack()
    assert ack == handoff.Ack(handoff_id=HID, epoch=3)
    assert delegatee.receive(ack) is ack
    assert delegatee.state is DelegateeState.DONE and delegator.state is DelegatorState.DONE


def test_a_reject_ends_the_exchange_and_needs_no_ack() -> None:
    delegator = Delegator(offer())
    reject = handoff.Reject(handoff_id=HID, code="quota_exceeded", message="m", retry_after_ms=5)
    delegator.receive(reject)
    assert delegator.state is DelegatorState.DONE and delegator.finished
    with pytest.raises(LocalProtocolError):
        delegator.ack()


@pytest.mark.parametrize(
    "msg",
    [
        handoff.Heartbeat(handoff_id=HID, elapsed_ms=1),
        handoff.StepFailed(handoff_id=HID, epoch=3, code="internal", message="x"),
        handoff.Canceled(handoff_id=HID, epoch=3, message="x"),
    ],
)
def test_nothing_but_a_decision_may_answer_an_offer(msg: handoff.HandoffMessage) -> None:
    with pytest.raises(HandoffViolation, match="before 'accept' or 'reject'"):
        Delegator(offer()).receive(msg)


def test_a_final_message_of_another_epoch_is_a_stale_answer() -> None:
    delegator = Delegator(offer(epoch=3))
    delegator.receive(handoff.Accept(handoff_id=HID, epoch=3))
    with pytest.raises(StaleEpochError, match="epoch 2") as info:
        delegator.receive(result(epoch=2))
    assert isinstance(info.value, RemoteProtocolError) and info.value.code == "stale_epoch"
    with pytest.raises(StaleEpochError):
        Delegator(offer(epoch=3)).receive(handoff.Accept(handoff_id=HID, epoch=4))


def test_messages_about_another_handoff_and_after_the_end_are_refused() -> None:
    delegator = Delegator(offer())
    with pytest.raises(HandoffViolation, match="another handoff"):
        delegator.receive(handoff.Accept(handoff_id="other", epoch=3))
    delegator.receive(handoff.Accept(handoff_id=HID, epoch=3))
    with pytest.raises(HandoffViolation, match="while the step runs"):
        delegator.receive(handoff.Accept(handoff_id=HID, epoch=3))
    delegator.receive(handoff.Canceled(handoff_id=HID, epoch=3, message="x"))
    with pytest.raises(HandoffViolation, match="after the exchange ended"):
        delegator.receive(handoff.Heartbeat(handoff_id=HID, elapsed_ms=1))


def test_cancel_before_and_after_the_decision() -> None:
    early = Delegator(offer())
    cancel = early.cancel("no longer wanted")
    assert cancel == handoff.Cancel(handoff_id=HID, reason="no longer wanted")
    assert early.state is DelegatorState.CANCELING
    with pytest.raises(LocalProtocolError):
        early.cancel()  # at most one
    early.receive(handoff.Accept(handoff_id=HID, epoch=3))  # still owed a decision
    early.receive(handoff.Heartbeat(handoff_id=HID, elapsed_ms=1))
    early.receive(result())  # finished before the cancel took effect: a result to acknowledge
    assert early.state is DelegatorState.FINISHED

    refused = Delegator(offer())
    refused.cancel()
    refused.receive(handoff.Reject(handoff_id=HID, code="overloaded", message="m"))
    assert refused.state is DelegatorState.DONE


def test_a_lone_cancel_is_answered_by_canceled_or_not_canceled_only() -> None:
    lone = handoff.Cancel(handoff_id=HID)
    delegator, delegatee = Delegator(lone), Delegatee()
    delegatee.receive(lone)
    assert delegatee.state is DelegateeState.CANCEL_ANSWER
    with pytest.raises(LocalProtocolError):
        delegatee.send(handoff.Accept(handoff_id=HID, epoch=0))
    relay(delegatee, delegator, handoff.Heartbeat(handoff_id=HID, elapsed_ms=1))
    relay(
        delegatee,
        delegator,
        handoff.NotCanceled(handoff_id=HID, code="unknown_handoff", message="m"),
    )
    assert delegator.state is DelegatorState.DONE and delegatee.state is DelegateeState.DONE
    with pytest.raises(HandoffViolation, match="lone cancel"):
        Delegator(lone).receive(result())


def test_the_delegatee_reads_only_cancel_then_ack_after_an_offer() -> None:
    delegatee = Delegatee()
    with pytest.raises(HandoffViolation, match="expected 'offer' or 'cancel'"):
        delegatee.receive(handoff.Ack(handoff_id=HID, epoch=0))
    delegatee.receive(offer())
    delegatee.send(handoff.Accept(handoff_id=HID, epoch=3))
    with pytest.raises(HandoffViolation, match="must be for"):
        delegatee.receive(handoff.Cancel(handoff_id="other"))
    assert delegatee.receive(handoff.Cancel(handoff_id=HID)) is not None
    assert delegatee.receive(handoff.Cancel(handoff_id=HID)) is None  # repeated: ignored
    assert delegatee.cancel_requested is not None
    with pytest.raises(HandoffViolation, match="expected 'cancel'"):
        delegatee.receive(handoff.Ack(handoff_id=HID, epoch=3))  # nothing to acknowledge yet
    delegatee.send(result())
    with pytest.raises(HandoffViolation, match="ack on this stream must be for"):
        delegatee.receive(handoff.Ack(handoff_id=HID, epoch=2))
    delegatee.receive(handoff.Ack(handoff_id=HID, epoch=3))
    assert delegatee.state is DelegateeState.DONE


def test_the_delegatee_cannot_send_out_of_turn() -> None:
    delegatee = Delegatee()
    delegatee.receive(offer())
    with pytest.raises(LocalProtocolError, match="heartbeat"):
        delegatee.send(handoff.Heartbeat(handoff_id=HID, elapsed_ms=1))
    with pytest.raises(LocalProtocolError, match="another handoff"):
        delegatee.send(handoff.Accept(handoff_id="x", epoch=3))
    delegatee.send(handoff.Reject(handoff_id=HID, code="hop_limit", message="m"))
    assert delegatee.state is DelegateeState.DONE
    with pytest.raises(LocalProtocolError):
        delegatee.send(handoff.Accept(handoff_id=HID, epoch=3))


@pytest.mark.parametrize(
    "final",
    [
        result(),
        handoff.StepFailed(handoff_id=HID, epoch=3, code="tool_failed", message="x"),
        handoff.Canceled(handoff_id=HID, epoch=3, message="x"),
    ],
)
def test_since_1_2_0_a_final_message_may_take_the_place_of_accept(
    final: handoff.HandoffMessage,
) -> None:
    o = offer()
    delegator, delegatee = Delegator(o, session=True), Delegatee(session=True)
    delegatee.receive(o)
    relay(delegatee, delegator, final)
    assert delegator.accepted and delegator.final == final
    if isinstance(final, handoff.Canceled):
        assert (delegator.state, delegatee.state) == (DelegatorState.DONE, DelegateeState.DONE)
    else:
        assert delegator.state is DelegatorState.FINISHED
        assert delegatee.receive(delegator.ack()) is not None
        assert delegatee.state is DelegateeState.DONE
    # not on older streams, either way
    with pytest.raises(LocalProtocolError):
        d = Delegatee()
        d.receive(o)
        d.send(final)
    with pytest.raises(HandoffViolation, match="before 'accept' or 'reject'"):
        Delegator(o).receive(final)


def test_an_implied_accept_still_checks_the_epoch_and_a_heartbeat_needs_an_accept() -> None:
    with pytest.raises(StaleEpochError):
        Delegator(offer(epoch=3), session=True).receive(result(epoch=2))
    with pytest.raises(HandoffViolation, match="before 'accept' or 'reject'"):
        Delegator(offer(), session=True).receive(handoff.Heartbeat(handoff_id=HID, elapsed_ms=1))
    with pytest.raises(LocalProtocolError):
        d = Delegatee(session=True)
        d.receive(offer())
        d.send(handoff.Heartbeat(handoff_id=HID, elapsed_ms=1))
