"""Serving ``watch`` (docs/protocols.md §10.8): a workflow's events, live, on one stream.

The events come from the node's :class:`~node.progress.ProgressHub`; this service sends
them, with a heartbeat on an idle stream, and records each workflow's end there (it waits
for the end of every workflow that has events, without a thread per workflow). A watcher
that does not read is cut off: a frame not taken within ``control.watch_write_timeout_s``
resets the stream, and one that lets ``control.watch_queue`` events pile up gets ``lagged``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from node.config import ControlConfig, NetworkConfig
from node.progress import ProgressEvent, ProgressHub, Subscription, WatchLimitError
from node.workflow_service import WorkflowService
from protocols import control, logsafe
from protocols.errors import ProtocolError
from protocols.framing import encode_frame
from protocols.stream import MessageStream
from protocols.versioning import dump_for
from workflows.errors import WorkflowNotFoundError

log = logging.getLogger(__name__)

# (workflow id) -> where it stands; raises for an unknown workflow
Snapshot = Callable[[str], Awaitable[control.Watching]]
_TERMINAL = ("SUCCESSFUL", "FAILED", "CANCELED")
_RECHECK_S = 1.0  # a watched workflow that no one runs (RESUMABLE): look again this often


def hub_from(config: ControlConfig) -> ProgressHub:
    return ProgressHub(
        events_kept=config.watch_events_kept,
        workflows_kept=config.watch_workflows_kept,
        max_watches=config.max_watches,
        max_watches_per_peer=config.max_watches_per_peer,
        queue=config.watch_queue,
    )


def wire_event(workflow_id: str, e: ProgressEvent) -> control.ProgressEvent:
    return control.ProgressEvent(
        workflow_id=workflow_id,
        seq=e.seq,
        time=e.time,
        kind=e.kind,
        step=e.step,
        tool=e.tool,
        node=e.node,
        reason=e.reason,
        error=e.error,
        status=e.status,
    )


class WatchService:
    def __init__(
        self,
        hub: ProgressHub,
        workflows: WorkflowService,
        config: ControlConfig,
        network: NetworkConfig,
    ) -> None:
        self.hub = hub
        self.workflows = workflows
        self.heartbeat_s = config.heartbeat_s
        self.write_timeout_s = config.watch_write_timeout_s
        self.network = network
        self._nursery: trio.Nursery | None = None
        self._finishing: set[str] = set()
        hub.listener = self._ensure_finisher

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the tasks that wait for workflows to end, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    # -- the end of a workflow ------------------------------------------------------------

    def _ensure_finisher(self, workflow_id: str) -> None:
        if (
            self._nursery is None
            or workflow_id in self._finishing
            or self.hub.finished(workflow_id) is not None
        ):
            return
        self._finishing.add(workflow_id)
        self._nursery.start_soon(self._finish, workflow_id)

    async def _finish(self, workflow_id: str) -> None:
        try:
            while True:
                view = await self.workflows.wait(workflow_id)
                status = view.status.value
                if status in _TERMINAL:
                    self.hub.workflow_finished(workflow_id, status, view.error)
                    return
                if not self.hub.watched(workflow_id):
                    return  # (its next event starts this again)
                await trio.sleep(_RECHECK_S)
        except WorkflowNotFoundError:
            return  # deleted
        except Exception:
            log.exception("waiting for the end of workflow %s failed", logsafe(workflow_id))
        finally:
            self._finishing.discard(workflow_id)

    # -- a watch stream ---------------------------------------------------------------------

    async def serve_watch(
        self,
        ms: MessageStream[Any],
        peer: str,
        request: control.WatchRequest,
        version: str,
        snapshot: Snapshot,
    ) -> None:
        """Answer a ``watch``: ``watching``, the events after ``since``, then every new one
        (a ``heartbeat`` when idle) until ``workflow_finished``; the caller closes."""
        wid = request.workflow_id
        bell = _Bell()
        seen = self.hub.last_seq(wid)
        state = await snapshot(wid)  # (raises for an unknown workflow: nothing subscribed)
        try:
            sub = self.hub.subscribe(wid, peer, request.since, bell.ring)
        except WatchLimitError as exc:
            log.info("watch of %s by %s refused: %s", logsafe(wid), peer, exc)
            await ms.send_error("busy", str(exc))
            return
        try:
            if sub.last_seq != seen:  # events in between: a snapshot that has them
                state = await snapshot(wid)
            await self._stream(ms, peer, wid, sub, state, version, bell)
        finally:
            self.hub.unsubscribe(sub.watcher)

    async def _stream(
        self,
        ms: MessageStream[Any],
        peer: str,
        wid: str,
        sub: Subscription,
        state: control.Watching,
        version: str,
        bell: _Bell,
    ) -> None:
        watcher = sub.watcher
        first = state.model_copy(
            update={"seq": sub.last_seq, "missed": sub.missed, "reset": sub.reset}
        )
        if not await self._send(ms, peer, first, version):
            return
        if state.status in _TERMINAL and self.hub.finished(wid) is None:
            self.hub.workflow_finished(wid, state.status, state.error)
        elif state.status not in _TERMINAL:
            self._ensure_finisher(wid)
        pending = sub.backlog
        last = sub.last_seq
        while True:
            for e in pending:
                if not await self._send(ms, peer, wire_event(wid, e), version):
                    return
                last = e.seq
                final = self.hub.finished(wid)
                if e.kind == "workflow_finished" and final is not None and final.seq == e.seq:
                    return
            bell.reset()
            if watcher.lagged:
                log.info("watch of %s by %s lagged: cut off", logsafe(wid), peer)
                await self._send_error(
                    ms,
                    "lagged",
                    f"this watch fell more than {watcher.limit} events behind and was cut "
                    f"off; watch again with since={last}",
                )
                return
            pending = watcher.take()
            if pending:
                continue
            with trio.move_on_after(self.heartbeat_s):
                await bell.event.wait()
                continue
            beat = control.Heartbeat(time=time.time(), seq=self.hub.last_seq(wid))
            if not await self._send(ms, peer, beat, version):
                return

    async def _send(self, ms: MessageStream[Any], peer: str, message: Any, version: str) -> bool:
        """Send one frame within the write timeout; False (stream reset) if the watcher does
        not take it or is gone."""
        data = encode_frame(dump_for(message, version), self.network.max_frame_size)
        try:
            with trio.fail_after(self.write_timeout_s):
                await ms.stream.write(data)
            return True
        except trio.TooSlowError:
            log.info(
                "watcher %s took no frame for %gs: cut off", logsafe(peer), self.write_timeout_s
            )
        except (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # gone
        except Exception as exc:  # libp2p's stream errors: the watcher is gone
            log.debug("watch stream to %s ended: %s", logsafe(peer), logsafe(exc))
        await _reset(ms)
        return False

    async def _send_error(self, ms: MessageStream[Any], code: str, message: str) -> None:
        try:
            with trio.fail_after(self.write_timeout_s):
                await ms.send_error(code, message)
        except Exception:
            await _reset(ms)

    # -- heartbeats while waiting for a result ----------------------------------------------

    async def with_heartbeats(
        self, ms: MessageStream[Any], work: Callable[[], Awaitable[Any]]
    ) -> tuple[bool, Any]:
        """Run ``work`` while sending a ``heartbeat`` every ``heartbeat_s``; (False, None)
        if the client went away meanwhile (``work`` is then cancelled). Exceptions of
        ``work`` are raised as they are."""
        result: Any = None
        error: Exception | None = None
        gone = False

        async def beat(cancel: trio.CancelScope) -> None:
            nonlocal gone
            while True:
                await trio.sleep(self.heartbeat_s)
                try:
                    # (never cut mid-frame: the answer follows on the same stream)
                    with trio.CancelScope(shield=True), trio.fail_after(self.write_timeout_s):
                        await ms.send(control.Heartbeat(time=time.time()))
                except Exception:
                    gone = True
                    cancel.cancel()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(beat, nursery.cancel_scope)
            try:
                result = await work()
            except Exception as exc:
                error = exc
            nursery.cancel_scope.cancel()
        if error is not None:
            raise error
        return (not gone, result)


class _Bell:
    """Rung by the hub when an event is queued for a watcher."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def ring(self) -> None:
        self.event.set()

    def reset(self) -> None:
        if self.event.is_set():
            self.event = trio.Event()


async def _reset(ms: MessageStream[Any]) -> None:
    try:
        await ms.reset()
    except Exception as exc:  # already gone
        log.debug("reset of a watch stream failed: %s", logsafe(exc))
