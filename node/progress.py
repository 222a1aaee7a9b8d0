"""What happens to a workflow, as a bounded, ordered log of events per workflow.

The executor and the workflow service report each step's progress here (pending, placed,
running, waiting and why, retried, re-attached, failed over, finished, failed), and the
control service the end of the workflow; ``watch`` streams (node.watch) read it. Pure:
no I/O, no trio; the clock is injected.

Everything is bounded, whoever watches: the events kept per workflow
(``control.watch_events_kept``; the oldest are dropped, and a watcher asking for them is
told how many it missed), the workflows kept (``control.watch_workflows_kept``; the least
recently touched without a watcher are forgotten first), the watches (``max_watches`` in
all, ``max_watches_per_peer``), and each watcher's queue (``watch_queue``): a watcher that
falls that far behind is marked *lagged* and its queue is dropped, never grown.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "EVENT_KINDS",
    "ProgressEvent",
    "ProgressHub",
    "Subscription",
    "WatchLimitError",
    "Watcher",
]

EVENT_KINDS = (
    "pending",  # the step waits for its inputs (reported when the workflow is created)
    "placed",  # the scheduler chose a node: ``node``, and why: ``reason``
    "running",  # it runs (locally) or was offered to ``node``
    "waiting",  # it cannot run now: ``reason`` says why (busy providers, none live, …)
    "retried",  # asked again after backpressure
    "reattached",  # asked the node it was lost on again, for the same attempt
    "failed_over",  # moved to another node after a failure or a lost node
    "finished",  # its result is in
    "failed",  # it failed: ``error``
    "skipped",  # its ``when`` was false, or a step it needs was skipped: ``reason``
    "workflow_finished",  # the workflow ended: ``status`` (and ``error``)
)
# kinds after which a step no longer waits
_CLEARS_WAITING = frozenset(EVENT_KINDS) - {"waiting", "pending", "workflow_finished"}


class WatchLimitError(Exception):
    """Too many watches (in all, or of one peer): wire code ``busy``."""


@dataclass(frozen=True)
class ProgressEvent:
    seq: int
    time: float  # Unix time
    kind: str
    step: str | None = None
    tool: str | None = None
    node: str | None = None
    reason: str | None = None
    error: str | None = None
    status: str | None = None


class Watcher:
    """One watch stream's queue: at most ``limit`` events; beyond, it is *lagged* (its queue
    is dropped and nothing more is queued) and the stream ends with ``lagged``."""

    def __init__(self, workflow_id: str, peer: str, limit: int, wake: Callable[[], None]) -> None:
        self.workflow_id = workflow_id
        self.peer = peer
        self.limit = limit
        self.lagged = False
        self._queue: deque[ProgressEvent] = deque()
        self._wake = wake

    def push(self, event: ProgressEvent) -> None:
        if self.lagged:
            return
        if len(self._queue) >= self.limit:
            self.lagged = True
            self._queue.clear()
        else:
            self._queue.append(event)
        self._wake()

    def take(self) -> list[ProgressEvent]:
        out = list(self._queue)
        self._queue.clear()
        return out

    def __len__(self) -> int:
        return len(self._queue)


@dataclass
class Subscription:
    watcher: Watcher
    backlog: list[ProgressEvent]  # kept events after ``since``, oldest first
    missed: int  # events after ``since`` no longer kept
    reset: bool  # ``since`` is beyond this log: the node restarted or forgot the workflow
    last_seq: int  # the newest event's seq when subscribing (0: none yet)


@dataclass
class _Log:
    events: deque[ProgressEvent]
    next_seq: int = 1
    waiting: dict[str, str] = field(default_factory=dict)
    finished: ProgressEvent | None = None
    steps: set[str] = field(default_factory=set)  # steps with events
    watchers: set[Watcher] = field(default_factory=set)


class ProgressHub:
    def __init__(
        self,
        *,
        events_kept: int = 1000,
        workflows_kept: int = 256,
        max_watches: int = 64,
        max_watches_per_peer: int = 8,
        queue: int = 256,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.events_kept = events_kept
        self.workflows_kept = workflows_kept
        self.max_watches = max_watches
        self.max_watches_per_peer = max_watches_per_peer
        self.queue = queue
        self.clock = clock
        self._logs: OrderedDict[str, _Log] = OrderedDict()  # least recently touched first
        self._per_peer: dict[str, int] = {}
        self._watches = 0
        # called with the workflow's id after each event (node.watch: makes sure someone
        # waits for the workflow's end, to record ``workflow_finished``)
        self.listener: Callable[[str], None] | None = None

    # -- reporting -------------------------------------------------------------------------

    def step(
        self,
        workflow_id: str,
        step: str,
        kind: str,
        *,
        tool: str | None = None,
        node: str | None = None,
        reason: str | None = None,
        error: str | None = None,
        status: str | None = None,
    ) -> ProgressEvent | None:
        """Record a step's event; a ``waiting`` with the reason the step already waits for
        is not repeated (None)."""
        log = self._log(workflow_id)
        log.steps.add(step)
        if kind == "waiting":
            if reason is not None and log.waiting.get(step) == reason:
                return None
            log.waiting[step] = reason or "waiting"
        elif kind in _CLEARS_WAITING:
            log.waiting.pop(step, None)
        if kind == "placed":  # a workflow resumed after it ended: it runs again
            log.finished = None
        return self._append(
            workflow_id,
            log,
            kind,
            step=step,
            tool=tool,
            node=node,
            reason=reason,
            error=error,
            status=status,
        )

    def workflow_finished(
        self, workflow_id: str, status: str, error: str | None = None
    ) -> ProgressEvent:
        """Record the end of the workflow (once: again only after it ran again, that is after
        a step of it was ``placed``)."""
        log = self._log(workflow_id)
        if log.finished is not None:
            return log.finished
        log.waiting.clear()
        event = self._append(workflow_id, log, "workflow_finished", status=status, error=error)
        log.finished = event
        return event

    def _append(
        self, workflow_id: str, log: _Log, kind: str, **fields: str | None
    ) -> ProgressEvent:
        event = ProgressEvent(seq=log.next_seq, time=self.clock(), kind=kind, **fields)
        log.next_seq += 1
        log.events.append(event)  # (a bounded deque: the oldest goes)
        for w in list(log.watchers):
            w.push(event)
        if self.listener is not None:
            self.listener(workflow_id)
        return event

    def _log(self, workflow_id: str) -> _Log:
        log = self._logs.get(workflow_id)
        if log is None:
            log = self._logs[workflow_id] = _Log(events=deque(maxlen=self.events_kept))
            self._evict()
        else:
            self._logs.move_to_end(workflow_id)
        return log

    def _evict(self) -> None:
        """Forget the least recently touched workflows nobody watches, finished ones first,
        beyond ``workflows_kept`` (those watched stay: at most ``max_watches`` of them)."""
        excess = len(self._logs) - self.workflows_kept
        if excess <= 0:
            return
        for finished_only in (True, False):
            for wid in [
                w
                for w, log in self._logs.items()
                if not log.watchers and (log.finished is not None or not finished_only)
            ]:
                if excess <= 0:
                    return
                del self._logs[wid]
                excess -= 1

    # -- reading -----------------------------------------------------------------------------

    def waiting(self, workflow_id: str, step: str) -> str | None:
        """Why the step waits now (None: it does not, or this node does not know)."""
        log = self._logs.get(workflow_id)
        return None if log is None else log.waiting.get(step)

    def events(self, workflow_id: str) -> list[ProgressEvent]:
        """The kept events of the workflow, oldest first."""
        log = self._logs.get(workflow_id)
        return [] if log is None else list(log.events)

    def knows(self, workflow_id: str, step: str) -> bool:
        """Whether the step has had an event (that is kept or not)."""
        log = self._logs.get(workflow_id)
        return log is not None and step in log.steps

    def finished(self, workflow_id: str) -> ProgressEvent | None:
        log = self._logs.get(workflow_id)
        return None if log is None else log.finished

    def watched(self, workflow_id: str) -> bool:
        log = self._logs.get(workflow_id)
        return bool(log is not None and log.watchers)

    def last_seq(self, workflow_id: str) -> int:
        log = self._logs.get(workflow_id)
        return 0 if log is None else log.next_seq - 1

    @property
    def watches(self) -> int:
        return self._watches

    def workflows(self) -> int:
        return len(self._logs)

    # -- watching ----------------------------------------------------------------------------

    def subscribe(
        self, workflow_id: str, peer: str, since: int, wake: Callable[[], None]
    ) -> Subscription:
        """Start a watch of ``workflow_id`` by ``peer`` from after event ``since``; raises
        :class:`WatchLimitError` beyond the bounds on watches."""
        if self._watches >= self.max_watches:
            raise WatchLimitError(
                f"this node serves {self._watches} watches already (control.max_watches); "
                "try again later"
            )
        mine = self._per_peer.get(peer, 0)
        if mine >= self.max_watches_per_peer:
            raise WatchLimitError(
                f"this client has {mine} watches open on this node already "
                "(control.max_watches_per_peer): close one first"
            )
        log = self._log(workflow_id)
        last = log.next_seq - 1
        reset = since > last
        start = 0 if reset else since
        backlog = [e for e in log.events if e.seq > start]
        first_kept = log.events[0].seq if log.events else log.next_seq
        missed = max(0, first_kept - 1 - start)
        watcher = Watcher(workflow_id, peer, self.queue, wake)
        log.watchers.add(watcher)
        self._watches += 1
        self._per_peer[peer] = mine + 1
        return Subscription(watcher, backlog, missed, reset, last)

    def unsubscribe(self, watcher: Watcher) -> None:
        log = self._logs.get(watcher.workflow_id)
        if log is None or watcher not in log.watchers:
            return
        log.watchers.discard(watcher)
        self._watches -= 1
        left = self._per_peer.get(watcher.peer, 1) - 1
        if left > 0:
            self._per_peer[watcher.peer] = left
        else:
            self._per_peer.pop(watcher.peer, None)
        self._evict()
