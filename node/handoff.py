"""Handoff: delegate one step to a peer (client side) and run steps for peers (server side).

Wire: offer → accept | reject → heartbeat* → result | failed. The delegator treats a stream
that ends, or goes silent longer than the heartbeat timeout, before ``result``/``failed`` as
:class:`HandoffLostError` (outcome unknown) — on yamux a dead peer looks like a clean close.
The delegatee is idempotent by handoff id: an offer whose id already finished gets the
stored result; one still running is joined.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from node.config import HandoffConfig, NetworkConfig
from node.errors import NodeError
from node.handoff_journal import AsyncHandoffJournal
from node.p2p import P2PHost, P2PStream
from protocols import handoff
from protocols.errors import (
    PeerErrorResponse,
    ProtocolError,
    ProtocolTimeoutError,
    StreamClosedError,
)
from protocols.stream import MessageStream
from workflows.errors import ToolError, ToolInputError, UnknownToolError
from workflows.tools import ToolRegistry

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


class HandoffLostError(HandoffError):
    """The stream ended or went silent before a final message: outcome unknown."""


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
    try:
        with trio.fail_after(offer.deadline_ms / 1000 + config.heartbeat_timeout_s):
            await ms.send(offer)
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
                raise HandoffLostError(peer_id, f"unexpected {msg.type!r} from {peer_id}")
    except trio.TooSlowError:
        await ms.reset()
        raise HandoffLostError(
            peer_id, f"peer {peer_id} did not finish before the step deadline"
        ) from None
    except ProtocolTimeoutError:
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
    except BaseException:
        await ms.reset()
        raise


ToolRunner = Callable[[str, str | None, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class _Job:
    done: trio.Event
    outcome: handoff.StepResult | handoff.StepFailed | None = None


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
            offer = await ms.receive_within(self.network.request_timeout_s)
        except ProtocolError as exc:
            log.info("bad handoff offer from %s: %s", peer, exc)
            try:
                await ms.send_error(exc.code, exc.message)
            finally:
                await ms.reset()
            return
        if not isinstance(offer, handoff.Offer):
            await ms.send_error("unexpected_message", f"expected 'offer', got {offer.type!r}")
            await ms.reset()
            return
        reject = self._check(offer, peer)
        if reject is not None:
            log.info("rejected handoff %s from %s: %s", offer.handoff_id, peer, reject.message)
            await ms.send(reject)
            await ms.close()
            return
        job = self._jobs.get(offer.handoff_id)
        if job is None:
            # reserve the id before the first await: a concurrent duplicate offer joins it
            job = self._jobs[offer.handoff_id] = _Job(trio.Event())
            try:
                stored = await self.journal.call(self.journal.sync.get_handoff, offer.handoff_id)
            except BaseException:
                del self._jobs[offer.handoff_id]
                raise
            if stored is not None and stored.direction == "in" and stored.status == "SUCCESSFUL":
                job.outcome = handoff.StepResult(
                    handoff_id=offer.handoff_id, outputs=stored.outputs or {}, duration_ms=0
                )
                job.done.set()
                del self._jobs[offer.handoff_id]
            else:
                await self._start(offer, peer, job)
        await ms.send(handoff.Accept(handoff_id=offer.handoff_id))
        started = time.monotonic()
        while not job.done.is_set():
            with trio.move_on_after(self.config.heartbeat_interval_s):
                await job.done.wait()
            if not job.done.is_set():
                elapsed = int((time.monotonic() - started) * 1000)
                await ms.send(handoff.Heartbeat(handoff_id=offer.handoff_id, elapsed_ms=elapsed))
        assert job.outcome is not None
        await ms.send(job.outcome)
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
            raise
        self._nursery.start_soon(self._run_job, offer, job)

    async def _run_job(self, offer: handoff.Offer, job: _Job) -> None:
        hid = offer.handoff_id
        started = time.monotonic()
        outcome: handoff.StepResult | handoff.StepFailed
        try:
            with trio.fail_after(offer.deadline_ms / 1000):
                outputs = await self.run_tool(offer.tool, offer.version, dict(offer.args))
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
            log.exception("handoff %s failed internally", hid)
            outcome = handoff.StepFailed(
                handoff_id=hid, code="internal", message=f"{type(exc).__name__}: {exc}"
            )
        try:
            if isinstance(outcome, handoff.StepResult):
                await self.journal.call(
                    self.journal.sync.finish_handoff, hid, "SUCCESSFUL", outputs=outcome.outputs
                )
            else:
                await self.journal.call(
                    self.journal.sync.finish_handoff, hid, "FAILED", error=outcome.message
                )
        finally:
            job.outcome = outcome
            job.done.set()
            self.running -= 1
            # keep finished jobs briefly for re-attaching delegators; the journal has them too
            self._jobs.pop(hid, None)
