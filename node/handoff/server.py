"""Handoff, delegatee side: run steps that peers offer, as much as this node allows them.

See :mod:`node.handoff.delegator` for the protocol's flow and :mod:`protocols.handoff.machine`
for its rules. Everything here is per offering peer: a handoff is keyed by (peer, handoff id),
so an offer with an id another peer used is a different handoff, and only the offering peer
can re-attach to it, cancel it, or receive its stored result.

Offers with the same key and the same ``epoch`` re-attach (join the running job, or get the
stored ``result`` / ``failed`` / ``canceled``); a higher epoch supersedes the previous attempt
(stopping it if it still runs); a lower one is refused as ``superseded``.

What a peer may ask is bounded (config ``handoff.*``): offers per minute, steps in flight,
argument and result sizes, the longest deadline, and the bytes of stored results it keeps
here. Delegated steps run in a pool of slots smaller than the node's (``reserved_share`` is
kept for its own workflows), shared fairly between peers. Each result is signed (a receipt,
:mod:`protocols.handoff.receipt`) with the node's key; stored results are dropped when the
delegator acknowledges them (``ack``) or after ``retention_s``.
"""

from __future__ import annotations

import logging
import time
import typing
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, cast

import trio

from node.config import HandoffConfig, NetworkConfig
from node.handoff.admission import OfferRate, SlotPool
from node.handoff.journal import AsyncHandoffJournal, HandoffRecord
from node.p2p import P2PStream
from protocols import handoff, logsafe
from protocols.canonical import (
    json_sha256,
    json_size_and_sha256,
    rough_json_size,
)
from protocols.errors import (
    LocalProtocolError,
    PeerErrorResponse,
    ProtocolError,
    StreamClosedError,
)
from protocols.handoff.machine import Delegatee, DelegateeState
from protocols.handoff.messages import HandoffMessage
from protocols.handoff.receipt import receipt_payload, signed_bytes
from protocols.stream import MessageStream
from protocols.wire import ErrorMessage
from workflows.engine.limits import StepLimits, bound_error_text
from workflows.errors import ToolError, ToolInputError, UnknownToolError, error_text
from workflows.tools import ToolRegistry, check_parameters, check_requirement

if typing.TYPE_CHECKING:
    from node.executor import PackageRunner

log = logging.getLogger(__name__)


# (tool, version, args, idempotency key) -> outputs
# (tool, version, args, key) -> outputs; parameters as the keyword ``parameters`` if any
ToolRunner = Callable[..., Awaitable[dict[str, Any]]]
Signer = Callable[[bytes], str]

JobOutcome = handoff.StepResult | handoff.StepFailed | handoff.Canceled
Key = tuple[str, str]  # (offering peer, handoff id)

PRUNE_INTERVAL_S = 60.0
# a step of a peer still running this long after it began is journaled as accepted; one that
# ends sooner is journaled once, with its outcome
ACCEPT_RECORD_DELAY_S = 0.05
# (1.2.0) a step that ends this soon after its offer sends its final message without an accept
ACCEPT_SEND_DELAY_S = 0.05
ACK_BATCH_S = 0.2
# results larger than this (as JSON) are hashed and signed in a worker thread: canonical JSON
# is built in Python (about 0.2-0.5 s a megabyte)
OFFLOAD_BYTES = 64 * 1024


@dataclass
class _Job:
    peer: str  # who offered it: only this peer may re-attach to it or cancel it
    handoff_id: str
    epoch: int
    tool: str
    workflow_id: str
    step: str
    deadline_ms: int
    done: trio.Event = field(default_factory=trio.Event)
    outcome: JobOutcome | None = None
    # cancelling it stops the tool (it may be cancelled before the job starts)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    cancel_reason: str | None = None
    canceled_by: str = "its delegator"
    accepted_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None  # when it got a slot and began to run
    # the ACCEPTED row: "pending" (due ACCEPT_RECORD_DELAY_S after the start), "writing",
    # "written", "failed" (a journal error), or "skipped" (the job ended first: one row, with
    # its outcome)
    accept_row: Literal["pending", "writing", "written", "failed", "skipped"] = "pending"
    accept_written: trio.Event = field(default_factory=trio.Event)  # set when written or failed


@dataclass(frozen=True)
class JobInfo:
    """A delegated step on this node, for ``hivemesh handoffs``."""

    peer: str
    handoff_id: str
    epoch: int
    tool: str
    workflow_id: str
    step: str
    state: Literal["waiting", "running", "stopping"]  # waiting: for a slot
    age_s: float
    deadline_s: float
    running_s: float | None


def _canceled(
    handoff_id: str, epoch: int, reason: str | None, by: str = "its delegator"
) -> handoff.Canceled:
    text = f"handoff {handoff_id} was canceled by {by}"
    return handoff.Canceled(
        handoff_id=handoff_id, epoch=epoch, message=f"{text}: {reason}" if reason else text
    )


def _reject(
    offer: handoff.Offer,
    code: handoff.RejectCode,
    message: str,
    *,
    retry_after_s: float | None = None,
    epoch: int | None = None,
) -> handoff.Reject:
    return handoff.Reject(
        handoff_id=offer.handoff_id,
        code=code,
        message=message,
        retry_after_ms=None if retry_after_s is None else max(1, int(retry_after_s * 1000)),
        epoch=epoch,
    )


def _superseded(offer: handoff.Offer, current: int) -> handoff.Reject:
    return _reject(
        offer,
        "superseded",
        f"attempt {offer.epoch} of handoff {offer.handoff_id!r} was superseded by attempt "
        f"{current}; offer a higher epoch to run it again",
        epoch=current,
    )


# what of a failed step's text fits a ``failed`` message (16384 characters): the message's
# head and the traceback's tail (its last frames, where the error was raised)
_FAILED_TEXT = StepLimits(max_error_chars=4096, max_traceback_chars=12000)


def _failed(job: _Job, code: handoff.FailureCode, message: str) -> handoff.StepFailed:
    return handoff.StepFailed(
        handoff_id=job.handoff_id,
        epoch=job.epoch,
        code=code,
        message=bound_error_text(message, _FAILED_TEXT)[:16384],
    )


def _unknown(handoff_id: str) -> handoff.NotCanceled:
    return handoff.NotCanceled(
        handoff_id=handoff_id,
        code="unknown_handoff",
        message=f"no handoff {handoff_id!r} from your peer id on this node",
    )


def _replay(handoff_id: str, epoch: int, stored: HandoffRecord | None) -> JobOutcome | None:
    """The stored outcome an offer re-attaching to a finished handoff (same epoch) gets: a
    result whose outputs and receipt are still stored, a failure, or a cancel (canceled stays
    canceled: never rerun). Anything else (interrupted by a restart, result acknowledged or
    pruned) runs again."""
    if stored is None or stored.epoch != epoch:
        return None
    if stored.status == "SUCCESSFUL" and stored.outputs is not None and stored.receipt:
        try:
            receipt = handoff.Receipt.model_validate(stored.receipt)
        except ValueError:
            return None
        return handoff.StepResult(
            handoff_id=handoff_id,
            epoch=epoch,
            outputs=stored.outputs,
            duration_ms=0,
            receipt=receipt,
        )
    if stored.status == "FAILED" and stored.code in typing.get_args(handoff.FailureCode):
        return handoff.StepFailed(
            handoff_id=handoff_id,
            epoch=epoch,
            code=cast(handoff.FailureCode, stored.code),
            message=stored.error or "failed",
        )
    if stored.status == "CANCELED":
        return handoff.Canceled(
            handoff_id=handoff_id,
            epoch=epoch,
            message=stored.error or _canceled(handoff_id, epoch, None).message,
        )
    return None


async def _error_and_reset(ms: MessageStream[HandoffMessage], exc: ProtocolError) -> None:
    """Tell the peer what was wrong with what it sent (if it still listens), then reset."""
    try:
        await ms.send_error(exc.code, exc.message)
    except ProtocolError:
        pass  # the stream was reset: the delegator is gone, nobody to tell
    finally:
        await ms.reset()


class HandoffServer:
    """Runs steps that peers delegate to this node."""

    def __init__(
        self,
        tools: ToolRegistry,
        run_tool: ToolRunner,
        journal: AsyncHandoffJournal,
        network: NetworkConfig,
        config: HandoffConfig,
        *,
        peer_id: str,
        sign: Signer,
        slots: int,
        clock: Callable[[], float] = time.monotonic,
        packages: PackageRunner | None = None,
    ) -> None:
        self.tools = tools
        # runs package steps (offers with ``package``); None: this node refuses them
        self.packages = packages
        self.run_tool = run_tool
        self.journal = journal
        self.network = network
        self.config = config
        self.peer_id = peer_id
        self._sign = sign
        self._clock = clock
        self.started_jobs = 0  # steps actually run here (joins and stored results excluded)
        self.canceled_jobs = 0  # running steps stopped by a cancel
        self._jobs: dict[Key, _Job] = {}
        # jobs that have their outcome, while it is being journaled: not running any more,
        # but a re-attach or a cancel still finds them here
        self._finishing: dict[Key, _Job] = {}
        self._per_peer: Counter[str] = Counter()  # jobs per offering peer
        self._rate = OfferRate(config.max_offers_per_minute, clock=clock)
        self.slots = SlotPool(slots)
        self._nursery: trio.Nursery | None = None
        self._acks: list[tuple[str, str, int]] = []  # (handoff id, peer, epoch) to record
        self._ack_waiting = trio.Event()
        # jobs whose ACCEPTED row is due at a time (trio's clock), oldest first
        self._accepts_due: deque[tuple[float, handoff.Offer, _Job]] = deque()
        self._accepts_wake = trio.Event()
        self._accepts_idle = False

    @property
    def running(self) -> int:
        """Steps of peers accepted here and not finished (running or waiting for a slot)."""
        return len(self._jobs)

    @property
    def settled(self) -> bool:
        """No step of a peer runs here, and every outcome is in the journal."""
        return not self._jobs and not self._finishing

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Owns the jobs: a job outlives the stream that offered it (a delegator may re-attach)."""
        # what was accepted before a restart is not running any more
        await self.journal.call(self.journal.sync.interrupt_accepted)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._record_acks)
            nursery.start_soon(self._record_accepts)
            task_status.started()
            while True:
                await self._prune()
                await trio.sleep(min(PRUNE_INTERVAL_S, self.config.retention_s / 4))

    async def _record_acks(self) -> None:
        """Acknowledged outcomes are dropped from the journal in batches (an ack lost in a
        crash only keeps a result until ``retention_s``)."""
        while True:
            await self._ack_waiting.wait()
            await trio.sleep(ACK_BATCH_S)  # let more gather
            self._ack_waiting = trio.Event()
            acks, self._acks = self._acks, []
            try:
                await self.journal.call(self.journal.sync.acknowledge_many, acks)
            except Exception as exc:  # a full disk must not stop the node from serving
                log.warning("could not record %d acknowledgements: %s", len(acks), exc)

    async def _prune(self) -> None:
        try:
            await self.journal.call(self.journal.sync.prune, retention_s=self.config.retention_s)
        except Exception as exc:  # a full disk must not stop the node from serving
            log.warning("could not prune the handoff journal: %s", exc)

    def jobs(self) -> list[JobInfo]:
        now = time.monotonic()
        out = []
        for job in sorted(self._jobs.values(), key=lambda j: j.accepted_at):
            state: Literal["waiting", "running", "stopping"]
            if job.cancel_reason is not None:
                state = "stopping"
            elif job.started_at is None:
                state = "waiting"
            else:
                state = "running"
            out.append(
                JobInfo(
                    peer=job.peer,
                    handoff_id=job.handoff_id,
                    epoch=job.epoch,
                    tool=job.tool,
                    workflow_id=job.workflow_id,
                    step=job.step,
                    state=state,
                    age_s=now - job.accepted_at,
                    deadline_s=job.deadline_ms / 1000,
                    running_s=None if job.started_at is None else now - job.started_at,
                )
            )
        return out

    def cancel_by_operator(self, handoff_id: str, peer: str | None = None) -> list[JobInfo]:
        """Stop the jobs with ``handoff_id`` (of ``peer``, if given); returns those stopped."""
        stopped = [
            info
            for info in self.jobs()
            if info.handoff_id == handoff_id and (peer is None or info.peer == peer)
        ]
        for info in stopped:
            job = self._jobs.get((info.peer, info.handoff_id))
            if job is not None:
                self._cancel_job(job, "stopped by the node's operator", by="this node's operator")
        return stopped

    def _authorised(self, peer: str) -> bool:
        return self.config.allow == "any" or peer in self.config.allow

    # -- a stream ------------------------------------------------------------------------

    async def handle(self, stream: P2PStream) -> None:
        """The handler of the newest version (1.2.0): a stream carries one exchange after
        another, until the delegator closes it or leaves it idle for ``session_idle_s``."""
        await self._serve_stream(stream, session=True)

    async def handle_1_1(self, stream: P2PStream) -> None:
        """The handler of ``/hivemesh/handoff/1.1.0``: one exchange per stream."""
        await self._serve_stream(stream, session=False)

    async def handle_1_0(self, stream: P2PStream) -> None:
        """The handler of ``/hivemesh/handoff/1.0.0``: the same, for an older delegator (its
        offers have no ``package`` or ``parameters``)."""
        await self._serve_stream(stream, session=False, legacy=True)

    async def _serve_stream(
        self, stream: P2PStream, *, session: bool, legacy: bool = False
    ) -> None:
        ms = MessageStream(stream, handoff.CODEC, limits=self.network.frame_limits())
        peer = stream.remote_peer
        idle = False
        while True:  # (1.2.0: the next exchange, if the delegator sends one in time)
            machine = Delegatee(session=session)
            await self._exchange(ms, machine, peer, legacy=legacy, idle=idle)
            if not machine.keeps_stream:
                return
            idle = True

    async def _first_message(
        self, ms: MessageStream[HandoffMessage], idle: bool
    ) -> HandoffMessage | None:
        """An exchange's first message; None if the stream ends or stays idle for
        ``session_idle_s`` between two exchanges (``idle``)."""
        if not idle:
            first = await ms.receive_within(self.network.request_timeout_s)
            assert not isinstance(first, ErrorMessage)  # raised as PeerErrorResponse
            return first
        with trio.move_on_after(self.config.session_idle_s):
            msg = await ms.receive_or_eof()
            if isinstance(msg, ErrorMessage):
                raise PeerErrorResponse(msg.code, msg.message)
            return msg
        return None

    async def _exchange(
        self,
        ms: MessageStream[HandoffMessage],
        machine: Delegatee,
        peer: str,
        *,
        legacy: bool,
        idle: bool,
    ) -> None:
        """One exchange on the stream: an offer's, or a lone cancel's."""
        try:
            first = await self._first_message(ms, idle)
            if first is None:
                await ms.close()  # the delegator let the stream go (or left it idle)
                return
            machine.receive(first)
        except ProtocolError as exc:
            if idle and isinstance(exc, StreamClosedError):
                await ms.reset()  # the delegator let the stream go
                return
            log.info("bad first handoff message from %s: %s", peer, logsafe(exc))
            await _error_and_reset(ms, exc)
            return
        wait_s = self._rate.take(peer)
        if wait_s > 0:
            problem = (
                f"more than {self.config.max_offers_per_minute} handoff requests a minute from "
                f"your peer id; retry in {wait_s:.1f}s"
            )
            log.info("refused a handoff request from %s: over its rate", peer)
            if isinstance(first, handoff.Offer):
                await self._send_final(
                    ms, machine, _reject(first, "quota_exceeded", problem, retry_after_s=wait_s)
                )
            else:
                await ms.send_error("quota_exceeded", problem)
                await ms.close()
            return
        if isinstance(first, handoff.Cancel):
            await self._answer_cancel(ms, machine, first, peer)
            return
        assert isinstance(first, handoff.Offer)
        if legacy and (first.package is not None or first.parameters is not None):
            problem = "'package' and 'parameters' are not members of handoff 1.0.0: use 1.1.0"
            await self._send_final(ms, machine, _reject(first, "invalid", problem))
            return
        await self._answer_offer(ms, machine, first, peer)

    async def _answer_offer(
        self, ms: MessageStream[HandoffMessage], machine: Delegatee, offer: handoff.Offer, peer: str
    ) -> None:
        hid = offer.handoff_id
        reject = self._check(offer, peer)
        if reject is None:
            job, reject = await self._job_for(offer, peer)
        if reject is not None:
            log.info("rejected handoff %s from %s: %s", logsafe(hid), peer, logsafe(reject.message))
            await self._send_final(ms, machine, reject)
            return
        assert job is not None
        if machine.session and not job.done.is_set():
            # 1.2.0: a step that ends soon sends its final message in place of the accept
            with trio.move_on_after(ACCEPT_SEND_DELAY_S):
                await job.done.wait()
        if not job.done.is_set() or not machine.session:
            await ms.send(machine.send(handoff.Accept(handoff_id=hid, epoch=offer.epoch)))
        await self._follow(ms, machine, job)

    async def _job_for(
        self, offer: handoff.Offer, peer: str
    ) -> tuple[_Job | None, handoff.Reject | None]:
        """The job this offer attaches to, started if need be; or why it is refused."""
        hid, epoch = offer.handoff_id, offer.epoch
        key = (peer, hid)
        job = self._job(key)
        if job is not None and job.epoch > epoch:
            return None, _superseded(offer, job.epoch)
        previous: _Job | None = None
        if job is not None and job.epoch < epoch:
            # a new attempt supersedes the running one: stop it; the new one starts when it
            # has stopped
            self._cancel_job(job, f"superseded by attempt {epoch}")
            self._drop(job)
            previous, job = job, None
        if job is not None:
            return job, None  # re-attach to the running attempt
        # reserve the key before the first await: a concurrent duplicate offer joins it
        job = _Job(
            peer=peer,
            handoff_id=hid,
            epoch=epoch,
            tool=offer.tool,
            workflow_id=offer.workflow_id,
            step=offer.step,
            deadline_ms=offer.deadline_ms,
        )
        capacity = self._capacity(offer, peer)
        self._jobs[key] = job
        self._per_peer[peer] += 1
        try:
            # on the event loop, without a thread round trip (the key is reserved above: a
            # concurrent duplicate offer joins this job instead of looking it up)
            stored = await self.journal.lookup(hid, direction="in", peer=peer)
            if stored is not None and stored.epoch > epoch:
                self._drop(job)
                return None, _superseded(offer, stored.epoch)
            replay = _replay(hid, epoch, stored)
            if replay is not None:
                self._drop(job)
                job.outcome = replay
                job.done.set()
                return job, None
            if capacity is not None:
                self._drop(job)
                return None, capacity
            # the journal over its bound (two stat() calls: cheap enough for the event loop)
            if (
                self.journal.sync.file_bytes() > self.config.max_journal_bytes
                and await self._journal_full()
            ):
                self._drop(job)
                return None, _reject(
                    offer,
                    "overloaded",
                    "this node's handoff journal is full; try another peer",
                    retry_after_s=PRUNE_INTERVAL_S,
                )
        except BaseException:
            self._drop(job)
            # whoever joined the reservation meanwhile (a duplicate offer, a cancel) must not
            # wait forever
            job.outcome = handoff.StepFailed(
                handoff_id=hid, epoch=epoch, code="internal", message="could not journal the step"
            )
            job.done.set()
            raise
        assert self._nursery is not None, "HandoffServer.serve() is not running"
        self.started_jobs += 1
        self._nursery.start_soon(self._run_job, offer, job, previous)
        return job, None

    def _job(self, key: Key) -> _Job | None:
        """The latest attempt of a handoff this node runs, or has just finished."""
        return self._jobs.get(key) or self._finishing.get(key)

    def _drop(self, job: _Job) -> None:
        key = (job.peer, job.handoff_id)
        if self._jobs.get(key) is job:
            del self._jobs[key]
            self._per_peer[job.peer] -= 1
            if self._per_peer[job.peer] <= 0:
                del self._per_peer[job.peer]

    async def _journal_full(self) -> bool:
        # two stat() calls: cheap enough for the event loop, no worker thread round trip
        if self.journal.sync.file_bytes() <= self.config.max_journal_bytes:
            return False
        await self._prune()
        size = await self.journal.call(self.journal.sync.file_bytes)
        return size > self.config.max_journal_bytes

    async def _follow(
        self, ms: MessageStream[HandoffMessage], machine: Delegatee, job: _Job
    ) -> None:
        """After ``accept``: heartbeats until the job ends, then its final message, then wait
        briefly for the delegator's ``ack``; meanwhile read what the delegator sends (a
        ``cancel``). A broken stream ends only the stream, never the job."""
        if job.done.is_set():  # (a quick step, or a stored outcome: nothing to follow)
            acked = await self._conclude(ms, machine, job)
        else:
            acked = await self._follow_running(ms, machine, job)
        if acked:  # written in batches, off the path of the next offers
            self._acks.append((job.handoff_id, job.peer, job.epoch))
            self._ack_waiting.set()

    async def _follow_running(
        self, ms: MessageStream[HandoffMessage], machine: Delegatee, job: _Job
    ) -> bool:
        """:meth:`_follow` while the job runs: a reader task takes a ``cancel`` meanwhile.
        True if the outcome was acknowledged."""
        lock = trio.Lock()  # one writer at a time: this task and the reader
        acked = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_after_offer, ms, machine, job, lock, acked, nursery)
            try:
                await self._beat_until_done(ms, machine, job, lock)
                assert job.outcome is not None
                async with lock:
                    await ms.send(machine.send(job.outcome))
                if machine.state is DelegateeState.AWAIT_ACK:
                    with trio.move_on_after(self.config.ack_wait_s):
                        await acked.wait()
                if not machine.keeps_stream:
                    await ms.close()  # (1.2.0: the stream carries the next exchange)
            except StreamClosedError as exc:
                goes_on = "it is being canceled" if job.cancel_reason is not None else "it goes on"
                log.info(
                    "delegator of handoff %s went away (%s); %s",
                    logsafe(job.handoff_id),
                    logsafe(exc),
                    goes_on,
                )
                await ms.reset()
            nursery.cancel_scope.cancel()
        return acked.is_set()

    async def _conclude(
        self, ms: MessageStream[HandoffMessage], machine: Delegatee, job: _Job
    ) -> bool:
        """:meth:`_follow` for a job that has its outcome already: send it, then read the
        ``ack`` in this task (a crossing ``cancel`` changes nothing). True if acknowledged."""
        assert job.outcome is not None
        acked = False
        try:
            await ms.send(machine.send(job.outcome))
            if machine.state is DelegateeState.AWAIT_ACK:
                with trio.move_on_after(self.config.ack_wait_s):
                    while not acked:
                        msg = await ms.receive_or_eof()
                        if msg is None:
                            break  # the delegator closed its side: it sends nothing more
                        if isinstance(msg, ErrorMessage):
                            log.info(
                                "delegator of handoff %s gave up: %s",
                                logsafe(job.handoff_id),
                                logsafe(msg.message),
                            )
                            await ms.reset()
                            return False
                        acked = isinstance(machine.receive(msg), handoff.Ack)
            if not machine.keeps_stream:
                await ms.close()  # (1.2.0: the stream carries the next exchange)
        except StreamClosedError:
            await ms.reset()  # the delegator is gone; the outcome is journaled for a re-offer
        except ProtocolError as exc:
            log.info("bad handoff message from %s after the offer: %s", job.peer, exc)
            await _error_and_reset(ms, exc)
        return acked

    async def _beat_until_done(
        self, ms: MessageStream[HandoffMessage], machine: Delegatee, job: _Job, lock: trio.Lock
    ) -> None:
        started = time.monotonic()
        while not job.done.is_set():
            with trio.move_on_after(self.config.heartbeat_interval_s):
                await job.done.wait()
            if not job.done.is_set():
                elapsed = int((time.monotonic() - started) * 1000)
                beat = handoff.Heartbeat(handoff_id=job.handoff_id, elapsed_ms=elapsed)
                async with lock:
                    await ms.send(machine.send(beat))

    async def _read_after_offer(
        self,
        ms: MessageStream[HandoffMessage],
        machine: Delegatee,
        job: _Job,
        lock: trio.Lock,
        acked: trio.Event,
        nursery: trio.Nursery,
    ) -> None:
        """The delegator may send ``cancel`` after its offer and ``ack`` after the final
        message, or close its side. Anything else ends the stream with an ``error``; the step
        goes on either way."""
        try:
            while True:
                msg = await ms.receive_or_eof()
                if msg is None:
                    return  # the delegator closed its side: it will send nothing more
                if isinstance(msg, ErrorMessage):
                    log.info(
                        "delegator of handoff %s gave up: %s",
                        logsafe(job.handoff_id),
                        logsafe(msg.message),
                    )
                    break
                event = machine.receive(msg)
                if isinstance(event, handoff.Cancel):
                    # jobs are per offering peer: whoever reads this stream offered the job
                    self._cancel_job(job, event.reason)
                elif isinstance(event, handoff.Ack):
                    acked.set()
                    return
        except StreamClosedError:
            await ms.reset()  # reset by the delegator: the stream is gone, the step goes on
            return
        except ProtocolError as exc:
            log.info("bad handoff message from %s after the offer: %s", job.peer, exc)
            try:
                async with lock:
                    await ms.send_error(exc.code, exc.message)
            except ProtocolError:
                pass
            await ms.reset()
        nursery.cancel_scope.cancel()  # this stream is over (not the job)

    def _cancel_job(self, job: _Job, reason: str, by: str = "its delegator") -> None:
        if job.done.is_set() or job.cancel_reason is not None:
            return
        log.info(
            "handoff %s of %s canceled by %s: %s",
            logsafe(job.handoff_id),
            job.peer,
            by,
            logsafe(reason or "no reason given"),
        )
        job.cancel_reason = reason
        job.canceled_by = by
        job.scope.cancel()

    async def _answer_cancel(
        self,
        ms: MessageStream[HandoffMessage],
        machine: Delegatee,
        cancel: handoff.Cancel,
        peer: str,
    ) -> None:
        """A ``cancel`` without an offer (the delegator's stream is gone): answer
        ``canceled`` once the step is stopped, or ``not_canceled``."""
        hid = cancel.handoff_id
        reply: handoff.Canceled | handoff.NotCanceled
        stored = None
        key = (peer, hid)
        job = self._job(key)
        if job is None:
            stored = await self.journal.call(
                self.journal.sync.get_handoff, hid, direction="in", peer=peer
            )
            job = self._job(key)  # an offer may have started it meanwhile
        if job is not None:
            self._cancel_job(job, cancel.reason)
            try:
                await self._beat_until_done(ms, machine, job, trio.Lock())
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
        elif stored is None:
            reply = _unknown(hid)
        elif stored.status == "CANCELED":
            reply = handoff.Canceled(
                handoff_id=hid,
                epoch=stored.epoch,
                message=stored.error or _canceled(hid, stored.epoch, None).message,
            )
        elif stored.status in ("SUCCESSFUL", "FAILED"):
            reply = handoff.NotCanceled(
                handoff_id=hid,
                code="finished",
                message=f"handoff {hid} already finished ({stored.status.lower()})",
            )
        else:  # accepted, but not running: interrupted by a restart of this node
            reply = _canceled(hid, stored.epoch, cancel.reason)
            await self.journal.call(
                self.journal.sync.finish_handoff,
                hid,
                "CANCELED",
                direction="in",
                peer=peer,
                error=reply.message,
            )
        await self._send_final(ms, machine, reply)

    async def _send_final(
        self,
        ms: MessageStream[HandoffMessage],
        machine: Delegatee,
        message: handoff.Reject | handoff.Canceled | handoff.NotCanceled,
    ) -> None:
        try:
            await ms.send(machine.send(message))
            if not machine.keeps_stream:  # (1.2.0: the stream carries the next exchange)
                await ms.close()
        except LocalProtocolError:
            log.exception("handoff server broke its own protocol")
            await ms.reset()
        except ProtocolError:  # the delegator is gone: nothing to tell it
            await ms.reset()

    # -- admission -----------------------------------------------------------------------

    def _check(self, offer: handoff.Offer, peer: str) -> handoff.Reject | None:
        """Checks that do not depend on what runs here now."""
        if not self._authorised(peer):
            return _reject(
                offer, "not_authorised", "this node does not accept steps from your peer id"
            )
        if offer.hops > self.config.max_hops:
            return _reject(
                offer, "hop_limit", f"hop count {offer.hops} exceeds {self.config.max_hops}"
            )
        if offer.parameters:
            try:
                check_parameters(offer.parameters)
            except ValueError as exc:
                return _reject(offer, "invalid", str(exc))
        if offer.package is not None:
            return self._check_package(offer)
        try:
            tool = self.tools.get(offer.tool, offer.version)
        except UnknownToolError as exc:
            return _reject(offer, "no_such_tool", str(exc))
        except ToolError as exc:  # a malformed tool name or version requirement
            return _reject(offer, "invalid", str(exc))
        if not tool.remote_callable:
            return _reject(offer, "no_such_tool", f"tool {offer.tool!r} is not offered to peers")
        return self._check_limits(offer)

    def _check_package(self, offer: handoff.Offer) -> handoff.Reject | None:
        """An offer of a package step: this node must install packages (``tools.install``)."""
        try:
            check_requirement(offer.package or "")
        except ValueError as exc:
            return _reject(offer, "invalid", str(exc))
        if self.packages is None:
            return _reject(
                offer,
                "installs_not_allowed",
                f"this node does not install packages (package {offer.package!r}): its "
                "tools.install is off",
            )
        return self._check_limits(offer)

    def _check_limits(self, offer: handoff.Offer) -> handoff.Reject | None:
        if offer.deadline_ms > self.config.max_deadline_s * 1000:
            return _reject(
                offer,
                "limit_exceeded",
                f"deadline of {offer.deadline_ms} ms exceeds this node's limit of "
                f"{int(self.config.max_deadline_s * 1000)} ms",
            )
        size = rough_json_size(offer.args)
        if size > self.config.max_args_bytes:
            return _reject(
                offer,
                "limit_exceeded",
                f"arguments of {size} bytes exceed this node's limit of "
                f"{self.config.max_args_bytes} bytes",
            )
        return None

    def _capacity(self, offer: handoff.Offer, peer: str) -> handoff.Reject | None:
        """May one more step of ``peer`` be accepted now? (The offer's key is not counted.)"""
        mine = self._per_peer[peer]
        if mine >= self.config.max_inflight_per_peer:
            return _reject(
                offer,
                "quota_exceeded",
                f"your peer id has {mine} steps in flight here, the most this node accepts "
                "from one peer",
                retry_after_s=self.config.heartbeat_interval_s * 5,
            )
        if self.running >= self.config.max_concurrent:
            return _reject(
                offer,
                "overloaded",
                f"{self.running} steps of peers in flight here; try another peer",
                retry_after_s=self.config.heartbeat_interval_s * 5,
            )
        return None

    # -- running -------------------------------------------------------------------------

    async def _record_accepts(self) -> None:
        """Journal each accepted attempt that is still running ``ACCEPT_RECORD_DELAY_S`` after
        it began (a step that ends sooner is journaled once, with its outcome). Not needed
        before the tool starts: a node that stops before this commit forgets the attempt, and
        a re-offer of an attempt it does not know runs the step again — as it does for an
        attempt that a restart interrupted (steps are at-least-once). One task for all jobs:
        it sleeps until the oldest one is due, so a quick step costs no task of its own."""
        due = self._accepts_due
        while True:
            if not due:
                self._accepts_idle = True
                await self._accepts_wake.wait()
                self._accepts_wake = trio.Event()
                self._accepts_idle = False
                continue
            at, offer, job = due[0]
            if job.accept_row != "pending":
                due.popleft()
                continue
            if at > trio.current_time():
                await trio.sleep_until(at)
                continue
            due.popleft()
            job.accept_row = "writing"
            row: Literal["written", "failed"] = "failed"
            try:
                await self.journal.call(
                    self.journal.sync.record_handoff,
                    offer.handoff_id,
                    direction="in",
                    peer=job.peer,
                    tool=offer.tool,
                    workflow_id=offer.workflow_id,
                    step=offer.step,
                    status="ACCEPTED",
                    epoch=job.epoch,
                )
                row = "written"
            except Exception as exc:  # a full disk must not stop the step or the node
                log.warning("could not journal handoff %s: %s", logsafe(offer.handoff_id), exc)
            finally:
                job.accept_row = row
                job.accept_written.set()

    async def _run_job(self, offer: handoff.Offer, job: _Job, previous: _Job | None) -> None:
        hid, peer = offer.handoff_id, job.peer
        outcome: JobOutcome
        self._accepts_due.append((trio.current_time() + ACCEPT_RECORD_DELAY_S, offer, job))
        if self._accepts_idle:
            self._accepts_wake.set()
        try:
            # a cancel stops the tool as a local cancel does: the runner cancels its Ray task
            # and kills the worker if it has not stopped after a grace period
            with job.scope:
                if previous is not None:  # the attempt this one supersedes is stopping
                    await previous.done.wait()
                await self.slots.acquire(peer)
                try:
                    job.started_at = time.monotonic()
                    with trio.fail_after(offer.deadline_ms / 1000):
                        # the step's key, as on the delegator: the same on every node and attempt
                        key = f"{offer.workflow_id}/{offer.step}"
                        tool_version: str | None = None
                        if offer.package is not None and self.packages is not None:
                            ran = await self.packages.run_package(
                                offer.package,
                                offer.tool if "." in offer.tool else None,
                                offer.version,
                                dict(offer.args),
                                key,
                                parameters=offer.parameters,
                            )
                            outputs, tool_version = ran.outputs, ran.tool_version
                        elif offer.parameters:
                            outputs = await self.run_tool(
                                offer.tool,
                                offer.version,
                                dict(offer.args),
                                key,
                                parameters=offer.parameters,
                            )
                        else:
                            outputs = await self.run_tool(
                                offer.tool, offer.version, dict(offer.args), key
                            )
                finally:
                    self.slots.release(peer)
            if job.scope.cancelled_caught:
                outcome = _canceled(hid, job.epoch, job.cancel_reason, job.canceled_by)
                self.canceled_jobs += 1
            else:
                duration = int((time.monotonic() - (job.started_at or job.accepted_at)) * 1000)
                work = rough_json_size(outputs) + rough_json_size(offer.args)
                if work > OFFLOAD_BYTES:  # do not hold up the event loop
                    outcome = await trio.to_thread.run_sync(
                        self._result, offer, job, outputs, duration, tool_version
                    )
                else:
                    outcome = self._result(offer, job, outputs, duration, tool_version)
        except trio.TooSlowError:
            outcome = handoff.StepFailed(
                handoff_id=hid,
                epoch=job.epoch,
                code="deadline_exceeded",
                message=f"step did not finish within {offer.deadline_ms} ms",
            )
        except ToolInputError as exc:
            outcome = _failed(job, "invalid_input", str(exc))
        except ToolError as exc:
            outcome = _failed(job, "tool_failed", error_text(exc))
        except Exception as exc:
            log.exception("handoff %s failed internally", logsafe(hid))
            outcome = _failed(job, "internal", f"{type(exc).__name__}: {exc}")
        # the delegator gets the outcome now; the journal records it meanwhile. A node that
        # stops before that commit has sent a result the delegator keeps, or lost one it
        # never got: a re-offer then runs the step again (at-least-once). The job stays
        # joinable until the record is written, so a re-attach never finds it half-stored.
        job.outcome = outcome
        job.done.set()
        self._drop(job)  # not running any more
        self._finishing[peer, hid] = job
        try:
            with trio.CancelScope(shield=True):
                if job.accept_row == "pending":
                    job.accept_row = "skipped"  # ended before its ACCEPTED row was due
                else:  # its ACCEPTED row first: finish updates it
                    await job.accept_written.wait()
            # (only this attempt's record: a later attempt may have replaced it meanwhile;
            # with no ACCEPTED row, the row and its outcome in one transaction)
            finish = (
                partial(
                    self.journal.sync.finish_handoff,
                    hid,
                    direction="in",
                    peer=peer,
                    epoch=job.epoch,
                )
                if job.accept_row == "written"
                else partial(
                    self.journal.sync.record_outcome,
                    hid,
                    direction="in",
                    peer=peer,
                    tool=offer.tool,
                    workflow_id=offer.workflow_id,
                    step=offer.step,
                    epoch=job.epoch,
                    if_latest=True,
                )
            )
            if isinstance(outcome, handoff.StepResult):
                stored = await self.journal.call(
                    finish,
                    status="SUCCESSFUL",
                    outputs=outcome.outputs,
                    receipt=outcome.receipt.model_dump(),
                )
            elif isinstance(outcome, handoff.Canceled):
                stored = await self.journal.call(finish, status="CANCELED", error=outcome.message)
            else:
                stored = await self.journal.call(
                    finish, status="FAILED", error=outcome.message, code=outcome.code
                )
            if stored > self.config.max_stored_bytes_per_peer:
                await self.journal.call(
                    self.journal.sync.prune,
                    retention_s=self.config.retention_s,
                    max_bytes_per_peer=self.config.max_stored_bytes_per_peer,
                    peer=peer,
                )
        except Exception as exc:  # a full disk must not stop the node from serving
            log.warning("could not journal the outcome of handoff %s: %s", logsafe(hid), exc)
        finally:
            # finished jobs are not kept: a re-attaching delegator finds them in the journal
            if self._finishing.get((peer, hid)) is job:
                del self._finishing[peer, hid]

    def _result(
        self,
        offer: handoff.Offer,
        job: _Job,
        outputs: dict[str, Any],
        duration_ms: int,
        tool_version: str | None = None,
    ) -> handoff.StepResult | handoff.StepFailed:
        """The signed result of a step, or a failure if the result is too large to hand back."""
        size, outputs_sha256 = json_size_and_sha256(outputs)
        limit = min(self.config.max_result_bytes, self.network.max_frame_size - 4096)
        if size > limit:
            return handoff.StepFailed(
                handoff_id=offer.handoff_id,
                epoch=offer.epoch,
                code="result_too_large",
                message=f"the step's result is {size} bytes, over this node's limit of "
                f"{limit} bytes",
            )
        if tool_version is None:  # (a package step's tool says its version as it runs)
            tool_version = self.tools.get(offer.tool, offer.version).version
        payload = receipt_payload(
            handoff_id=offer.handoff_id,
            epoch=offer.epoch,
            delegator=job.peer,
            delegatee=self.peer_id,
            tool=offer.tool,
            tool_version=tool_version,
            args_sha256=json_sha256(offer.args),
            outputs_sha256=outputs_sha256,
        )
        receipt = handoff.Receipt(
            tool_version=tool_version,
            args_sha256=payload["args_sha256"],
            outputs_sha256=payload["outputs_sha256"],
            signature=self._sign(signed_bytes(payload)),
        )
        return handoff.StepResult(
            handoff_id=offer.handoff_id,
            epoch=offer.epoch,
            outputs=outputs,
            duration_ms=duration_ms,
            receipt=receipt,
        )
