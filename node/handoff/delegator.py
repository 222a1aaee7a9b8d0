"""Handoff, delegator side: delegate one step to a peer, or cancel it there.
The delegatee side is :mod:`node.handoff.server`.

Wire: offer → accept | reject → heartbeat* → result | failed | canceled. The delegator treats a
stream that ends, or goes silent longer than the heartbeat timeout, before a final message as
:class:`HandoffLostError` (outcome unknown) — on yamux a dead peer looks like a clean close.
The delegatee is idempotent by handoff id: an offer whose id already finished gets the
stored result (or ``canceled``); one still running is joined.

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
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import trio

from node.config import HandoffConfig, NetworkConfig
from node.errors import NodeError
from node.p2p import P2PHost
from protocols import handoff, logsafe
from protocols.errors import (
    PeerErrorResponse,
    ProtocolError,
    ProtocolTimeoutError,
    StreamClosedError,
)
from protocols.handoff.messages import MAX_REASON_LEN, HandoffMessage
from protocols.stream import MessageStream
from protocols.wire import ErrorMessage

log = logging.getLogger(__name__)


class HandoffError(NodeError):
    """A delegated step did not produce a result."""

    def __init__(self, peer: str, message: str) -> None:
        super().__init__(message)
        self.peer = peer
        self.message = message


class HandoffRejectedError(HandoffError):
    """The peer refused the offer (``code`` from the wire: no_such_tool, overloaded, …)."""

    def __init__(self, peer: str, code: str, message: str) -> None:
        super().__init__(peer, f"peer {peer} rejected the step ({code}): {message}")
        self.code = code


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


_FINAL = (handoff.StepResult, handoff.StepFailed, handoff.Canceled, handoff.NotCanceled)


@dataclass(frozen=True)
class HandoffOutcome:
    outputs: dict[str, Any]
    duration_ms: int
    rtt_ms: float


async def delegate(
    host: P2PHost,
    peer_id: str,
    offer: handoff.Offer,
    *,
    network: NetworkConfig,
    config: HandoffConfig,
) -> HandoffOutcome:
    """Send ``offer`` to ``peer_id`` and wait for its final message."""
    started = time.monotonic()
    stream = await host.open_stream(peer_id, handoff.PROTOCOL_ID)
    ms = MessageStream(stream, handoff.CODEC, max_frame_size=network.max_frame_size)
    offered = False
    try:
        with trio.fail_after(offer.deadline_ms / 1000 + config.heartbeat_timeout_s):
            await ms.send(offer)
            offered = True
            first = await ms.receive_within(config.heartbeat_timeout_s)
            rtt_ms = (time.monotonic() - started) * 1000
            if isinstance(first, handoff.Reject) and first.handoff_id == offer.handoff_id:
                raise HandoffRejectedError(peer_id, first.code, first.message)
            if not isinstance(first, handoff.Accept) or first.handoff_id != offer.handoff_id:
                raise HandoffLostError(
                    peer_id, f"peer {peer_id} answered the offer with {first.type!r}"
                )
            while True:
                try:
                    msg = await ms.receive_within(config.heartbeat_timeout_s)
                except PeerErrorResponse as exc:
                    raise HandoffLostError(
                        peer_id,
                        f"peer {peer_id} aborted the accepted step ({exc.code}: {exc.message}): "
                        "outcome unknown",
                    ) from None
                if getattr(msg, "handoff_id", None) != offer.handoff_id:
                    raise HandoffLostError(
                        peer_id, f"peer {peer_id} answered about another handoff: outcome unknown"
                    )
                if isinstance(msg, handoff.Heartbeat):
                    continue
                if isinstance(msg, handoff.StepResult):
                    await ms.close()
                    return HandoffOutcome(msg.outputs, msg.duration_ms, rtt_ms)
                if isinstance(msg, handoff.StepFailed):
                    await ms.close()
                    raise HandoffFailedError(peer_id, msg.code, msg.message)
                if isinstance(msg, handoff.Canceled):
                    await ms.close()
                    raise HandoffCanceledError(peer_id, msg.message)
                raise HandoffLostError(peer_id, f"unexpected {msg.type!r} from {peer_id}")
    except trio.TooSlowError:
        with trio.move_on_after(GIVE_UP_CANCEL_S):
            await _cancel_on_stream(
                ms, offer.handoff_id, "the delegator's deadline passed", GIVE_UP_CANCEL_S
            )
        await ms.reset()
        raise HandoffLostError(
            peer_id, f"peer {peer_id} did not finish before the step deadline"
        ) from None
    except ProtocolTimeoutError:
        with trio.move_on_after(GIVE_UP_CANCEL_S):
            await _cancel_on_stream(
                ms, offer.handoff_id, "the delegator heard nothing for too long", GIVE_UP_CANCEL_S
            )
        await ms.reset()
        raise HandoffLostError(
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
        raise HandoffLostError(peer_id, f"peer {peer_id} broke the protocol: {exc}") from None
    except trio.Cancelled:
        abandon = _ABANDON.get()
        if offered and abandon is not None and abandon.reason is not None:
            await _abandon(host, peer_id, ms, offer.handoff_id, abandon, network, config)
        else:
            await ms.reset()
        raise
    except BaseException:
        await ms.reset()
        raise


async def _cancel_on_stream(
    ms: MessageStream[HandoffMessage], handoff_id: str, reason: str, silence_s: float
) -> HandoffMessage | None:
    """Send ``cancel`` on the offer's stream; return the exchange's final message (closing
    the stream), or None if the stream broke or went silent. The caller bounds the total
    time and resets."""
    try:
        await ms.send(handoff.Cancel(handoff_id=handoff_id, reason=reason[:MAX_REASON_LEN]))
        while True:
            msg = await ms.receive_within(silence_s)
            if isinstance(msg, (*_FINAL, handoff.Reject)):
                await ms.close()
                return msg
    except ProtocolError as exc:
        log.debug("cancel of handoff %s on its stream: %s", logsafe(handoff_id), logsafe(exc))
        return None


async def _abandon(
    host: P2PHost,
    peer_id: str,
    ms: MessageStream[HandoffMessage],
    handoff_id: str,
    abandon: Abandon,
    network: NetworkConfig,
    config: HandoffConfig,
) -> None:
    """Tell the peer the step is no longer wanted and wait for its final answer: on the
    offer's stream if it still works, else on a fresh one. We are being cancelled, so this is
    shielded; it is bounded by the silence limit per message and, in all, by that limit plus
    the time a peer may take to stop the step."""
    assert abandon.reason is not None
    reply: HandoffMessage | None = None
    silence_s = config.heartbeat_timeout_s
    with trio.CancelScope(shield=True):
        with trio.move_on_after(silence_s + CANCEL_STOP_ALLOWANCE_S):
            reply = await _cancel_on_stream(ms, handoff_id, abandon.reason, silence_s)
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
) -> handoff.Canceled | handoff.NotCanceled:
    """Cancel ``handoff_id`` at ``peer_id`` on a fresh stream (no offer): ``canceled`` once the
    step is stopped, or ``not_canceled`` (unknown to the peer, or already finished).

    Raises :class:`HandoffLostError` when the peer does not answer (outcome unknown)."""
    stream = await host.open_stream(peer_id, handoff.PROTOCOL_ID)
    ms = MessageStream(stream, handoff.CODEC, max_frame_size=network.max_frame_size)
    try:
        await ms.send(handoff.Cancel(handoff_id=handoff_id, reason=reason[:MAX_REASON_LEN]))
        while True:
            msg = await ms.receive_within(config.heartbeat_timeout_s)
            if getattr(msg, "handoff_id", None) != handoff_id:
                raise HandoffLostError(
                    peer_id, f"peer {peer_id} answered about another handoff: outcome unknown"
                )
            if isinstance(msg, handoff.Heartbeat):
                continue
            if isinstance(msg, (handoff.Canceled, handoff.NotCanceled)):
                await ms.close()
                return msg
            raise HandoffLostError(
                peer_id, f"peer {peer_id} answered the cancel with {msg.type!r}: outcome unknown"
            )
    except ProtocolError as exc:
        await ms.reset()
        raise HandoffLostError(
            peer_id, f"cancel of handoff {handoff_id} at {peer_id}: {exc.code}: {exc.message}"
        ) from None
    except BaseException:
        await ms.reset()
        raise
