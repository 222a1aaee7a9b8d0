"""Handoff, delegator side: delegate one step to a peer, or cancel it there.
The delegatee side is :mod:`node.handoff.server`.

Wire: offer → accept | reject → heartbeat* → result | failed | canceled → ack. The rules
(which message may follow which, the epoch of final messages) are the sans-I/O state machine
:class:`protocols.handoff.machine.Delegator`. The delegator treats a stream that ends, or goes
silent longer than the heartbeat timeout, before a final message as :class:`HandoffLostError`
(outcome unknown) — on yamux a dead peer looks like a clean close. The delegatee is idempotent
by (our peer id, handoff id, epoch): an offer whose attempt already finished gets the stored
result (or ``failed`` / ``canceled``); one still running is joined. A result is accepted only
with a receipt signed by the delegatee (:mod:`node.handoff.receipts`).

Cancel: a delegator that no longer wants a step's result sends ``cancel`` on the offer's
stream (or, if that stream is gone, as the only message of a fresh stream: see
:func:`cancel_handoff`). The delegatee stops the job (the tool runner's own cancel: Ray's polite
cancel, then the worker is killed after a grace period), journals it CANCELED and answers
``canceled``. Cancelling the task that runs :func:`delegate` does *not* by itself send a cancel
(a node shutting down wants the step to go on, to re-attach after its restart): the canceller
marks the task's :class:`Abandon` first (see :func:`abandon_on_cancel`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from node.config import HandoffConfig, NetworkConfig
from node.errors import NodeError
from node.handoff.errors import (
    HandoffCanceledError,
    HandoffError,
    HandoffFailedError,
    HandoffGaveUpError,
    HandoffLostError,
    HandoffProtocolError,
    HandoffRejectedError,
)
from node.handoff.receipts import check_receipt
from node.handoff.sessions import PROTOCOL_IDS, HandoffStreams, carries_sessions, older_than
from node.p2p import P2PHost
from protocols import handoff, logsafe
from protocols.canonical import rough_json_size
from protocols.errors import (
    LocalProtocolError,
    PeerErrorResponse,
    ProtocolError,
    ProtocolRefusedError,
    ProtocolTimeoutError,
    StreamClosedError,
)
from protocols.handoff.machine import Delegator, DelegatorState
from protocols.handoff.messages import MAX_REASON_LEN, HandoffMessage
from protocols.stream import MessageStream
from protocols.versioning import parse_version, version_of
from protocols.wire import ErrorMessage

log = logging.getLogger(__name__)


# How long a delegator that gives up on a step because the peer is silent or too slow spends
# telling it so (best effort: such a peer may not be listening any more).
GIVE_UP_CANCEL_S = 1.0
# What a delegatee may take to stop a step after a cancel, beyond the usual silence limit (the
# reference one: Ray's polite cancel, then the worker is killed after a 2 s grace period).
CANCEL_STOP_ALLOWANCE_S = 5.0


@dataclass
class Abandon:
    """Says that the task running :func:`delegate` is being cancelled for good.

    Cancelling that task alone leaves the step running on the peer — what a node that shuts
    down wants: it re-attaches after its restart. Whoever cancels it because the step's result
    is no longer wanted (its workflow was canceled or failed) calls :meth:`request` first, on
    the object bound to that task with :func:`abandon_on_cancel`; ``delegate`` then sends
    ``cancel`` to the peer before letting the cancellation through, and records the peer's
    final answer in :attr:`reply`.
    """

    reason: str | None = None
    reply: HandoffMessage | ErrorMessage | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason


_ABANDON: ContextVar[Abandon | None] = ContextVar("hivemesh_handoff_abandon", default=None)


@contextmanager
def abandon_on_cancel(abandon: Abandon) -> Iterator[Abandon]:
    """Bind ``abandon`` to the current task for the handoffs it makes in this block."""
    token = _ABANDON.set(abandon)
    try:
        yield abandon
    finally:
        _ABANDON.reset(token)


def current_abandon() -> Abandon | None:
    """The :class:`Abandon` bound to the current task, if any."""
    return _ABANDON.get()


@dataclass(frozen=True)
class HandoffOutcome:
    outputs: dict[str, Any]
    duration_ms: int
    rtt_ms: float
    epoch: int = 0
    receipt: dict[str, Any] | None = None  # the checked receipt: signed object + signature


# Records a verified result durably before it is acknowledged to the delegatee.
ResultRecorder = Callable[[HandoffOutcome], Awaitable[None]]
ACK_SEND_S = 5.0
# results larger than this (as JSON) have their receipt checked in a worker thread
OFFLOAD_BYTES = 64 * 1024


async def delegate(
    host: P2PHost,
    peer_id: str,
    offer: handoff.Offer,
    *,
    network: NetworkConfig,
    config: HandoffConfig,
    check: Callable[[dict[str, Any]], None] | None = None,
    record: ResultRecorder | None = None,
    background: trio.Nursery | None = None,
    streams: HandoffStreams | None = None,
) -> HandoffOutcome:
    """Send ``offer`` to ``peer_id`` and wait for its final message.

    A ``result`` is accepted only with a valid receipt (else :class:`InvalidReceiptError`)
    and outputs that ``check`` accepts (it raises a :class:`HandoffError`, e.g.
    :class:`InvalidResultError`, to refuse them).
    It is then acknowledged: at once, or — given ``record`` and a ``background`` nursery —
    after ``record`` has stored it, in the background, so the caller gets the outputs first
    and the delegatee keeps its copy until ours is safe.

    ``streams``: where the exchange takes an idle stream to the peer and leaves it when the
    exchange ends cleanly (handoff 1.2.0), and which older version a peer that refused the
    newest speaks. Without it, each call opens a stream of its own and closes it."""
    started = time.monotonic()
    protocol = streams.protocol_for(peer_id) if streams is not None else PROTOCOL_IDS[0]
    kept = streams is not None
    while True:
        session = carries_sessions(protocol)
        kept_one = streams.take(peer_id) if streams is not None and kept and session else None
        ms, owed = kept_one if kept_one is not None else (None, None)
        reused = ms is not None
        if ms is None:
            ms = await _open(host, peer_id, protocol, offer, network)
            if streams is not None:
                streams.opened += 1
        try:
            return await _exchange(
                host,
                peer_id,
                ms,
                offer,
                owed,
                started,
                reused,
                network,
                config,
                check,
                record,
                background,
                session,
                streams,
            )
        except _OfferAgain as again:
            if again.refused:
                older = _refused(streams, peer_id, protocol)
                if older is None:
                    ids = ", ".join(PROTOCOL_IDS)
                    raise HandoffRejectedError(
                        peer_id, "invalid", f"it speaks none of {ids}; upgrade that node"
                    ) from None
                log.info("peer %s refused %s; offering %s", peer_id, protocol, older)
                protocol = older
            else:  # a kept stream the peer had closed meanwhile: the same offer, a new stream
                kept = False


def _refused(streams: HandoffStreams | None, peer_id: str, protocol: str) -> str | None:
    """``peer_id`` refused ``protocol``: the older id to propose (remembered in ``streams``)."""
    return streams.refused(peer_id, protocol) if streams is not None else older_than(protocol)


class _OfferAgain(Exception):
    """The stream ended before the peer answered anything, in a way that says the offer was
    never read: the peer refused the protocol id (``refused``), or a kept stream had been
    closed by the peer. Offering again on a new stream is safe (offers are idempotent)."""

    def __init__(self, refused: bool) -> None:
        self.refused = refused


async def _open(
    host: P2PHost, peer_id: str, protocol: str, offer: handoff.Offer | None, network: NetworkConfig
) -> MessageStream[HandoffMessage]:
    version = version_of(protocol)
    if (
        offer is not None
        and parse_version(version) < (1, 1, 0)
        and (offer.package is not None or offer.parameters is not None)
    ):
        raise HandoffRejectedError(
            peer_id,
            "invalid",
            f"it speaks handoff {version} only, which cannot carry a step's 'package' or "
            "'parameters'; upgrade that node",
        )
    stream = await host.open_stream(peer_id, protocol)
    return MessageStream(
        stream,
        handoff.CODEC,
        limits=network.frame_limits(),
        version=None if protocol == PROTOCOL_IDS[0] else version,
    )


async def _exchange(
    host: P2PHost,
    peer_id: str,
    ms: MessageStream[HandoffMessage],
    offer: handoff.Offer,
    owed: handoff.Ack | None,
    started: float,
    reused: bool,
    network: NetworkConfig,
    config: HandoffConfig,
    check: Callable[[dict[str, Any]], None] | None,
    record: ResultRecorder | None,
    background: trio.Nursery | None,
    session: bool,
    streams: HandoffStreams | None,
) -> HandoffOutcome:
    """One offer's exchange on ``ms`` (after ``owed``, the previous exchange's ack, in the
    same write). ``session``: the stream speaks 1.2.0 (or later), so it may carry the next
    exchange: it goes to ``streams`` when this one ends cleanly (else, or without
    ``streams``, it is closed)."""
    machine = Delegator(offer, session=session)
    if not session:
        streams = None
    offered = False
    heard = False
    rtt_ms = 0.0
    try:
        with trio.fail_after(offer.deadline_ms / 1000 + config.heartbeat_timeout_s):
            try:
                await ms.send_many((owed, offer) if owed is not None else (offer,))
            except StreamClosedError:
                if not reused:
                    raise
                raise _OfferAgain(refused=False) from None
            offered = True
            while not machine.finished:
                try:
                    msg = await ms.receive_within(config.heartbeat_timeout_s)
                except ProtocolRefusedError:
                    if heard:
                        raise
                    raise _OfferAgain(refused=True) from None
                except StreamClosedError:
                    if heard or not reused:
                        raise
                    raise _OfferAgain(refused=False) from None
                except PeerErrorResponse as exc:
                    if machine.accepted:
                        raise HandoffLostError(
                            peer_id,
                            f"peer {peer_id} aborted the accepted step ({exc.code}: "
                            f"{exc.message}): outcome unknown",
                        ) from None
                    raise
                assert not isinstance(msg, ErrorMessage)
                heard = True
                machine.receive(msg)
                if isinstance(msg, handoff.Accept):
                    rtt_ms = (time.monotonic() - started) * 1000
        final = machine.final
        if isinstance(final, handoff.StepResult | handoff.StepFailed) and not rtt_ms:
            # a quick step's final message implied the accept (1.2.0): the round trip is the
            # wait for it less the step's own run time
            elapsed_ms = (time.monotonic() - started) * 1000
            rtt_ms = max(0.0, elapsed_ms - getattr(final, "duration_ms", 0))
        if isinstance(final, handoff.Reject):
            await _done(ms, peer_id, streams)
            raise HandoffRejectedError(
                peer_id,
                final.code,
                final.message,
                retry_after_s=None if final.retry_after_ms is None else final.retry_after_ms / 1000,
                epoch=final.epoch,
            )
        if isinstance(final, handoff.Canceled):
            await _done(ms, peer_id, streams)
            raise HandoffCanceledError(peer_id, final.message)
        if isinstance(final, handoff.StepFailed):
            await _ack(ms, machine, peer_id, streams)
            raise HandoffFailedError(peer_id, final.code, final.message)
        assert isinstance(final, handoff.StepResult)
        try:
            work = rough_json_size(final.outputs) + rough_json_size(offer.args)
            if work > OFFLOAD_BYTES:  # do not hold up the event loop
                receipt = await trio.to_thread.run_sync(
                    partial(check_receipt, final, offer, delegator=host.peer_id, delegatee=peer_id)
                )
            else:
                receipt = check_receipt(final, offer, delegator=host.peer_id, delegatee=peer_id)
            if check is not None:
                check(final.outputs)
        except HandoffError:
            await ms.reset()  # not acknowledged: it is not a result we accept
            raise
        outcome = HandoffOutcome(final.outputs, final.duration_ms, rtt_ms, offer.epoch, receipt)
        if record is not None and background is not None:
            background.start_soon(_record_and_ack, ms, machine, outcome, record, peer_id, streams)
        else:
            if record is not None:
                await record(outcome)
            await _ack(ms, machine, peer_id, streams)
        return outcome
    except trio.TooSlowError:
        with trio.move_on_after(GIVE_UP_CANCEL_S):
            await _cancel_on_stream(
                ms, machine, "the delegator's deadline passed", GIVE_UP_CANCEL_S
            )
        await ms.reset()
        raise HandoffGaveUpError(
            peer_id, f"peer {peer_id} did not finish before the step deadline"
        ) from None
    except ProtocolTimeoutError:
        with trio.move_on_after(GIVE_UP_CANCEL_S):
            await _cancel_on_stream(
                ms, machine, "the delegator heard nothing for too long", GIVE_UP_CANCEL_S
            )
        await ms.reset()
        raise HandoffGaveUpError(
            peer_id,
            f"peer {peer_id} went silent (no heartbeat for {config.heartbeat_timeout_s:g}s): "
            "outcome unknown",
        ) from None
    except StreamClosedError:
        await ms.reset()
        raise HandoffLostError(
            peer_id, f"peer {peer_id} closed the handoff before sending a result: outcome unknown"
        ) from None
    except PeerErrorResponse as exc:
        await ms.reset()
        raise HandoffRejectedError(peer_id, "invalid", f"{exc.code}: {exc.message}") from None
    except ProtocolError as exc:
        await ms.reset()
        raise HandoffProtocolError(
            peer_id, f"peer {peer_id} broke the handoff protocol: {exc}: outcome unknown"
        ) from None
    except trio.Cancelled:
        abandon = _ABANDON.get()
        if offered and abandon is not None and abandon.reason is not None:
            await _abandon(host, peer_id, ms, machine, abandon, network, config)
        else:
            await ms.reset()
        raise
    except HandoffError:
        raise
    except BaseException:
        await ms.reset()
        raise


async def _done(
    ms: MessageStream[HandoffMessage], peer_id: str, streams: HandoffStreams | None
) -> None:
    """The exchange ended cleanly: the stream carries the next one (1.2.0), or is closed."""
    if streams is not None:
        streams.give(peer_id, ms)
    else:
        await ms.close()


async def _ack(
    ms: MessageStream[HandoffMessage],
    machine: Delegator,
    peer_id: str,
    streams: HandoffStreams | None = None,
) -> None:
    """Acknowledge the final result or failure (best effort), then end the exchange. A kept
    stream (1.2.0) carries the ack with its next offer, or the pool sends it shortly."""
    if streams is not None:
        streams.give(peer_id, ms, owed=machine.ack())
        return
    try:
        with trio.move_on_after(ACK_SEND_S) as scope:
            await ms.send(machine.ack())
        if scope.cancelled_caught:
            await ms.reset()
        else:
            await ms.close()
    except ProtocolError:
        await ms.reset()


async def _record_and_ack(
    ms: MessageStream[HandoffMessage],
    machine: Delegator,
    outcome: HandoffOutcome,
    record: ResultRecorder,
    peer_id: str,
    streams: HandoffStreams | None,
) -> None:
    try:
        await record(outcome)
    except Exception as exc:
        # not acknowledged: the delegatee keeps the result for a re-attach
        log.warning(
            "could not record the result of handoff %s: %s", logsafe(machine.handoff_id), exc
        )
        await ms.reset()
        return
    await _ack(ms, machine, peer_id, streams)


async def _cancel_on_stream(
    ms: MessageStream[HandoffMessage], machine: Delegator, reason: str, silence_s: float
) -> HandoffMessage | None:
    """Send ``cancel`` on the offer's stream; return the exchange's final message (closing
    the stream), or None if the stream broke or went silent. The caller bounds the total
    time and resets."""
    try:
        if machine.finished:
            return machine.final
        await ms.send(machine.cancel(reason[:MAX_REASON_LEN]))
        while not machine.finished:
            msg = await ms.receive_within(silence_s)
            assert not isinstance(msg, ErrorMessage)
            machine.receive(msg)
        if machine.state is DelegatorState.FINISHED:
            await ms.send(machine.ack())  # the step finished first: its outcome is ours
        await ms.close()
        return machine.final
    except (ProtocolError, LocalProtocolError) as exc:
        log.debug(
            "cancel of handoff %s on its stream: %s", logsafe(machine.handoff_id), logsafe(exc)
        )
        return None


async def _abandon(
    host: P2PHost,
    peer_id: str,
    ms: MessageStream[HandoffMessage],
    machine: Delegator,
    abandon: Abandon,
    network: NetworkConfig,
    config: HandoffConfig,
) -> None:
    """Tell the peer the step is no longer wanted and wait for its final answer: on the
    offer's stream if it still works, else on a fresh one. We are being cancelled, so this is
    shielded; it is bounded by the silence limit per message and, in all, by that limit plus
    the time a peer may take to stop the step."""
    assert abandon.reason is not None
    handoff_id = machine.handoff_id
    reply: HandoffMessage | None = None
    silence_s = config.heartbeat_timeout_s
    with trio.CancelScope(shield=True):
        with trio.move_on_after(silence_s + CANCEL_STOP_ALLOWANCE_S):
            reply = await _cancel_on_stream(ms, machine, abandon.reason, silence_s)
            if reply is None:
                await ms.reset()
                if host.is_connected(peer_id):
                    try:
                        reply = await cancel_handoff(
                            host,
                            peer_id,
                            handoff_id,
                            abandon.reason,
                            network=network,
                            config=config,
                        )
                    except NodeError as exc:
                        log.info(
                            "could not cancel handoff %s at %s: %s",
                            logsafe(handoff_id),
                            peer_id,
                            logsafe(exc),
                        )
        if reply is None:
            await ms.reset()
    abandon.reply = reply
    log.info(
        "handoff %s at %s abandoned (%s): peer answered %s",
        logsafe(handoff_id),
        peer_id,
        abandon.reason,
        reply.type if reply is not None else "nothing",
    )


async def cancel_handoff(
    host: P2PHost,
    peer_id: str,
    handoff_id: str,
    reason: str,
    *,
    network: NetworkConfig,
    config: HandoffConfig,
    streams: HandoffStreams | None = None,
) -> handoff.Canceled | handoff.NotCanceled:
    """Cancel ``handoff_id`` at ``peer_id`` on a fresh stream (no offer): ``canceled`` once the
    step is stopped, or ``not_canceled`` (unknown to the peer, or already finished).

    Raises :class:`HandoffLostError` when the peer does not answer (outcome unknown)."""
    protocol: str | None = streams.protocol_for(peer_id) if streams else PROTOCOL_IDS[0]
    while protocol is not None:
        ms = await _open(host, peer_id, protocol, None, network)
        try:
            return await _cancel_alone(ms, peer_id, handoff_id, reason, config)
        except ProtocolRefusedError:
            protocol = _refused(streams, peer_id, protocol)
    raise HandoffLostError(peer_id, f"peer {peer_id} speaks no version of the handoff protocol")


async def _cancel_alone(
    ms: MessageStream[HandoffMessage],
    peer_id: str,
    handoff_id: str,
    reason: str,
    config: HandoffConfig,
) -> handoff.Canceled | handoff.NotCanceled:
    cancel = handoff.Cancel(handoff_id=handoff_id, reason=reason[:MAX_REASON_LEN])
    machine = Delegator(cancel)
    try:
        await ms.send(cancel)
        while not machine.finished:
            msg = await ms.receive_within(config.heartbeat_timeout_s)
            assert not isinstance(msg, ErrorMessage)
            machine.receive(msg)
        await ms.close()
        assert isinstance(machine.final, (handoff.Canceled, handoff.NotCanceled))
        return machine.final
    except ProtocolRefusedError:
        await ms.reset()
        raise
    except ProtocolError as exc:
        await ms.reset()
        raise HandoffLostError(
            peer_id, f"cancel of handoff {handoff_id} at {peer_id}: {exc.code}: {exc.message}"
        ) from None
    except BaseException:
        await ms.reset()
        raise
