"""Handoff, delegatee side: run steps that peers offer, idempotently by handoff id.

See :mod:`node.handoff.delegator` for the protocol's flow. An offer whose id already
finished gets the stored result (or ``canceled``); one still running is joined. A ``cancel``
from the peer that offered a handoff stops its job (Ray's polite cancel, then the worker is
killed after a grace period), journals it CANCELED and is answered ``canceled``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from node.config import HandoffConfig, NetworkConfig
from node.handoff.journal import AsyncHandoffJournal
from node.p2p import P2PStream
from protocols import handoff, logsafe
from protocols.errors import (
    ProtocolError,
    StreamClosedError,
)
from protocols.handoff.messages import HandoffMessage
from protocols.stream import MessageStream
from protocols.wire import ErrorMessage
from workflows.errors import ToolError, ToolInputError, UnknownToolError
from workflows.tools import ToolRegistry

log = logging.getLogger(__name__)


# (tool, version, args, idempotency key) -> outputs
ToolRunner = Callable[[str, str | None, dict[str, Any], str | None], Awaitable[dict[str, Any]]]

JobOutcome = handoff.StepResult | handoff.StepFailed | handoff.Canceled


@dataclass
class _Job:
    done: trio.Event
    peer: str  # who offered it: only this peer may cancel it
    outcome: JobOutcome | None = None
    # cancelling it stops the tool (it may be cancelled before the job starts)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    cancel_reason: str | None = None


def _canceled(handoff_id: str, reason: str | None) -> handoff.Canceled:
    text = f"handoff {handoff_id} was canceled by its delegator"
    return handoff.Canceled(handoff_id=handoff_id, message=f"{text}: {reason}" if reason else text)


def _unknown(handoff_id: str) -> handoff.NotCanceled:
    return handoff.NotCanceled(
        handoff_id=handoff_id,
        code="unknown_handoff",
        message=f"no handoff {handoff_id!r} from your peer id on this node",
    )


class HandoffServer:
    """Runs steps that peers delegate to this node."""

    def __init__(
        self,
        tools: ToolRegistry,
        run_tool: ToolRunner,
        journal: AsyncHandoffJournal,
        network: NetworkConfig,
        config: HandoffConfig,
    ) -> None:
        self.tools = tools
        self.run_tool = run_tool
        self.journal = journal
        self.network = network
        self.config = config
        self.running = 0
        self.started_jobs = 0  # steps actually run here (joins and stored results excluded)
        self.canceled_jobs = 0  # running steps stopped by a delegator's cancel
        self._jobs: dict[str, _Job] = {}
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Owns the jobs: a job outlives the stream that offered it (a delegator may re-attach)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def _authorised(self, peer: str) -> bool:
        return self.config.allow == "any" or peer in self.config.allow

    async def handle(self, stream: P2PStream) -> None:
        ms = MessageStream(stream, handoff.CODEC, max_frame_size=self.network.max_frame_size)
        peer = stream.remote_peer
        try:
            first = await ms.receive_within(self.network.request_timeout_s)
        except ProtocolError as exc:
            log.info("bad first handoff message from %s: %s", peer, logsafe(exc))
            try:
                await ms.send_error(exc.code, exc.message)
            finally:
                await ms.reset()
            return
        if isinstance(first, handoff.Cancel):
            await self._handle_cancel(ms, first, peer)
            return
        if not isinstance(first, handoff.Offer):
            await ms.send_error(
                "unexpected_message", f"expected 'offer' or 'cancel', got {first.type!r}"
            )
            await ms.reset()
            return
        offer = first
        reject = self._check(offer, peer)
        if reject is not None:
            log.info(
                "rejected handoff %s from %s: %s",
                logsafe(offer.handoff_id),
                peer,
                logsafe(reject.message),
            )
            await ms.send(reject)
            await ms.close()
            return
        job = self._jobs.get(offer.handoff_id)
        if job is None:
            # reserve the id before the first await: a concurrent duplicate offer joins it
            job = self._jobs[offer.handoff_id] = _Job(trio.Event(), peer)
            try:
                stored = await self.journal.call(self.journal.sync.get_handoff, offer.handoff_id)
            except BaseException:
                del self._jobs[offer.handoff_id]
                raise
            replay: JobOutcome | None = None
            if stored is not None and stored.direction == "in":
                if stored.status == "SUCCESSFUL":
                    replay = handoff.StepResult(
                        handoff_id=offer.handoff_id, outputs=stored.outputs or {}, duration_ms=0
                    )
                elif stored.status == "CANCELED":  # canceled stays canceled: never rerun
                    replay = handoff.Canceled(
                        handoff_id=offer.handoff_id,
                        message=stored.error or _canceled(offer.handoff_id, None).message,
                    )
            if replay is not None:
                job.outcome = replay
                job.done.set()
                del self._jobs[offer.handoff_id]
            else:
                await self._start(offer, peer, job)
        await ms.send(handoff.Accept(handoff_id=offer.handoff_id))
        await self._follow(ms, offer.handoff_id, job, peer)

    async def _follow(
        self, ms: MessageStream[HandoffMessage], handoff_id: str, job: _Job, peer: str
    ) -> None:
        """After ``accept``: heartbeats until the job ends, then its final message; meanwhile
        read what the delegator sends (a ``cancel``). A broken stream ends only the stream."""
        lock = trio.Lock()  # one writer at a time: this task and the reader
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_after_offer, ms, handoff_id, job, peer, lock, nursery)
            try:
                await self._beat_until_done(ms, handoff_id, job, lock)
                assert job.outcome is not None
                async with lock:
                    await ms.send(job.outcome)
                await ms.close()
            except StreamClosedError as exc:
                goes_on = "it is being canceled" if job.cancel_reason is not None else "it goes on"
                log.info(
                    "delegator of handoff %s went away (%s); %s",
                    logsafe(handoff_id),
                    logsafe(exc),
                    goes_on,
                )
                await ms.reset()
            nursery.cancel_scope.cancel()

    async def _beat_until_done(
        self, ms: MessageStream[HandoffMessage], handoff_id: str, job: _Job, lock: trio.Lock
    ) -> None:
        started = time.monotonic()
        while not job.done.is_set():
            with trio.move_on_after(self.config.heartbeat_interval_s):
                await job.done.wait()
            if not job.done.is_set():
                elapsed = int((time.monotonic() - started) * 1000)
                async with lock:
                    await ms.send(handoff.Heartbeat(handoff_id=handoff_id, elapsed_ms=elapsed))

    async def _read_after_offer(
        self,
        ms: MessageStream[HandoffMessage],
        handoff_id: str,
        job: _Job,
        peer: str,
        lock: trio.Lock,
        nursery: trio.Nursery,
    ) -> None:
        """The delegator may send ``cancel`` (for this handoff) after its offer, or close its
        side. Anything else ends the stream with an ``error``; the step goes on either way."""
        try:
            while True:
                msg = await ms.receive_or_eof()
                if msg is None:
                    return  # the delegator closed its side: it will send nothing more
                if isinstance(msg, ErrorMessage):
                    log.info(
                        "delegator of handoff %s gave up: %s",
                        logsafe(handoff_id),
                        logsafe(msg.message),
                    )
                    break
                if isinstance(msg, handoff.Cancel) and msg.handoff_id == handoff_id:
                    if job.peer == peer:
                        self._cancel_job(handoff_id, job, msg.reason, peer)
                        continue  # the job ends as canceled; _follow sends that
                    # joined by another peer than the one that offered it: not yours to cancel
                    async with lock:
                        await ms.send(_unknown(handoff_id))
                    await ms.close()
                    break
                if isinstance(msg, handoff.Cancel):
                    problem = f"a cancel on this stream must be for {handoff_id!r}"
                else:
                    problem = f"expected 'cancel' after the offer, got {msg.type!r}"
                async with lock:
                    await ms.send_error("unexpected_message", problem)
                await ms.reset()
                break
        except StreamClosedError:
            await ms.reset()  # reset by the delegator: the stream is gone, the step goes on
        except ProtocolError as exc:
            log.info("bad handoff message from %s after the offer: %s", peer, logsafe(exc))
            try:
                async with lock:
                    await ms.send_error(exc.code, exc.message)
            except ProtocolError:
                pass
            await ms.reset()
        nursery.cancel_scope.cancel()  # this stream is over (not the job)

    def _cancel_job(self, handoff_id: str, job: _Job, reason: str, peer: str) -> None:
        if job.done.is_set() or job.cancel_reason is not None:
            return
        log.info(
            "handoff %s canceled by %s: %s",
            logsafe(handoff_id),
            peer,
            logsafe(reason or "no reason given"),
        )
        job.cancel_reason = reason
        job.scope.cancel()

    async def _handle_cancel(
        self, ms: MessageStream[HandoffMessage], cancel: handoff.Cancel, peer: str
    ) -> None:
        """A ``cancel`` without an offer (the delegator's stream is gone): answer
        ``canceled`` once the step is stopped, or ``not_canceled``."""
        hid = cancel.handoff_id
        reply: handoff.Canceled | handoff.NotCanceled
        stored = None
        job = self._jobs.get(hid)
        if job is None:
            stored = await self.journal.call(self.journal.sync.get_handoff, hid)
            job = self._jobs.get(hid)  # an offer may have started it meanwhile
        if job is not None:
            if job.peer != peer:
                reply = _unknown(hid)
            else:
                self._cancel_job(hid, job, cancel.reason, peer)
                try:
                    await self._beat_until_done(ms, hid, job, trio.Lock())
                except StreamClosedError:
                    await ms.reset()  # the cancel stands; nobody is waiting for the answer
                    return
                if isinstance(job.outcome, handoff.Canceled):
                    reply = job.outcome
                else:
                    reply = handoff.NotCanceled(
                        handoff_id=hid,
                        code="finished",
                        message=f"handoff {hid} finished before the cancel took effect",
                    )
        elif stored is None or stored.direction != "in" or stored.peer != peer:
            reply = _unknown(hid)
        elif stored.status == "CANCELED":
            reply = handoff.Canceled(
                handoff_id=hid, message=stored.error or _canceled(hid, None).message
            )
        elif stored.status in ("SUCCESSFUL", "FAILED"):
            reply = handoff.NotCanceled(
                handoff_id=hid,
                code="finished",
                message=f"handoff {hid} already finished ({stored.status.lower()})",
            )
        else:  # accepted, but not running: interrupted by a restart of this node
            reply = _canceled(hid, cancel.reason)
            await self.journal.call(
                self.journal.sync.finish_handoff, hid, "CANCELED", error=reply.message
            )
        await ms.send(reply)
        await ms.close()

    def _check(self, offer: handoff.Offer, peer: str) -> handoff.Reject | None:
        def rej(code: handoff.RejectCode, message: str) -> handoff.Reject:
            return handoff.Reject(handoff_id=offer.handoff_id, code=code, message=message)

        if not self._authorised(peer):
            return rej("not_authorised", "this node does not accept steps from your peer id")
        if offer.hops > self.config.max_hops:
            return rej("hop_limit", f"hop count {offer.hops} exceeds {self.config.max_hops}")
        try:
            tool = self.tools.get(offer.tool, offer.version)
        except UnknownToolError as exc:
            return rej("no_such_tool", str(exc))
        except ToolError as exc:  # a malformed tool name or version requirement
            return rej("invalid", str(exc))
        if not tool.remote_callable:
            return rej("no_such_tool", f"tool {offer.tool!r} is not offered to peers")
        if offer.handoff_id not in self._jobs and self.running >= self.config.max_concurrent:
            return rej("overloaded", f"{self.running} steps running; try another peer")
        return None

    async def _start(self, offer: handoff.Offer, peer: str, job: _Job) -> None:
        assert self._nursery is not None, "HandoffServer.serve() is not running"
        self.running += 1
        self.started_jobs += 1
        try:
            await self.journal.call(
                self.journal.sync.record_handoff,
                offer.handoff_id,
                direction="in",
                peer=peer,
                tool=offer.tool,
                workflow_id=offer.workflow_id,
                step=offer.step,
                status="ACCEPTED",
            )
        except BaseException:
            self.running -= 1
            self._jobs.pop(offer.handoff_id, None)
            # whoever joined the reservation meanwhile (a duplicate offer, a cancel) must not
            # wait forever
            job.outcome = handoff.StepFailed(
                handoff_id=offer.handoff_id, code="internal", message="could not journal the step"
            )
            job.done.set()
            raise
        self._nursery.start_soon(self._run_job, offer, job)

    async def _run_job(self, offer: handoff.Offer, job: _Job) -> None:
        hid = offer.handoff_id
        started = time.monotonic()
        outcome: JobOutcome
        try:
            # a cancel stops the tool as a local cancel does: the runner cancels its Ray task
            # and kills the worker if it has not stopped after a grace period
            with job.scope:
                with trio.fail_after(offer.deadline_ms / 1000):
                    # the step's key, as on the delegator: the same on every node and attempt
                    key = f"{offer.workflow_id}/{offer.step}"
                    outputs = await self.run_tool(offer.tool, offer.version, dict(offer.args), key)
            if job.scope.cancelled_caught:
                outcome = _canceled(hid, job.cancel_reason)
                self.canceled_jobs += 1
            else:
                duration = int((time.monotonic() - started) * 1000)
                outcome = handoff.StepResult(handoff_id=hid, outputs=outputs, duration_ms=duration)
        except trio.TooSlowError:
            outcome = handoff.StepFailed(
                handoff_id=hid,
                code="deadline_exceeded",
                message=f"step did not finish within {offer.deadline_ms} ms",
            )
        except ToolInputError as exc:
            outcome = handoff.StepFailed(handoff_id=hid, code="invalid_input", message=str(exc))
        except ToolError as exc:
            outcome = handoff.StepFailed(handoff_id=hid, code="tool_failed", message=str(exc))
        except Exception as exc:
            log.exception("handoff %s failed internally", logsafe(hid))
            outcome = handoff.StepFailed(
                handoff_id=hid, code="internal", message=f"{type(exc).__name__}: {exc}"
            )
        try:
            if isinstance(outcome, handoff.StepResult):
                await self.journal.call(
                    self.journal.sync.finish_handoff, hid, "SUCCESSFUL", outputs=outcome.outputs
                )
            elif isinstance(outcome, handoff.Canceled):
                await self.journal.call(
                    self.journal.sync.finish_handoff, hid, "CANCELED", error=outcome.message
                )
            else:
                await self.journal.call(
                    self.journal.sync.finish_handoff, hid, "FAILED", error=outcome.message
                )
        finally:
            job.outcome = outcome
            job.done.set()
            self.running -= 1
            # finished jobs are not kept: a re-attaching delegator finds them in the journal
            self._jobs.pop(hid, None)
