"""Control service: what the CLI (or any authorised client) asks a node."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from node.config import ControlConfig, NetworkConfig
from node.handoff.journal import AsyncHandoffJournal, JournalError
from node.handoff.server import HandoffServer, JobInfo
from node.p2p import P2PHost, P2PStream
from node.registry import PeerRegistry, PeerState
from node.workflow_service import WorkflowService, WorkflowView
from protocols import control, logsafe
from protocols.errors import ProtocolError
from protocols.framing import encode_frame
from protocols.stream import MessageStream
from protocols.versioning import dump_for, version_of
from workflows.dsl import parse_workflow
from workflows.engine.storage import StorageError
from workflows.errors import WorkflowError, WorkflowNotFoundError
from workflows.tools import ToolRegistry

log = logging.getLogger(__name__)


class _NotFound(Exception):
    """A request about something this node does not have (wire code ``not_found``)."""


class ControlService:
    def __init__(
        self,
        *,
        host: P2PHost,
        workflows: WorkflowService,
        registry: PeerRegistry,
        tools: ToolRegistry,
        version: str,
        owner_client: str,
        network: NetworkConfig,
        config: ControlConfig,
        handoffs: HandoffServer,
        journal: AsyncHandoffJournal,
        ray_info: control.RayInfo | None = None,
    ) -> None:
        self.host = host
        self.handoffs = handoffs
        self.journal = journal
        self.ray_info = ray_info
        self.workflows = workflows
        self.registry = registry
        self.tools = tools
        self.version = version
        self.allowed = {owner_client, *config.allowed_clients}
        self.allow_any = config.allow_any_client
        self.network = network

    def authorised(self, peer: str) -> bool:
        return self.allow_any or peer in self.allowed

    async def handle(self, stream: P2PStream) -> None:
        await self._serve(stream, version_of(control.PROTOCOL_ID))

    def legacy_handler(self, protocol_id: str) -> Callable[[P2PStream], Awaitable[None]]:
        """A handler for an older minor version of the protocol (docs/protocols.md §3.1)."""
        version = version_of(protocol_id)

        async def handle(stream: P2PStream) -> None:
            await self._serve(stream, version)

        return handle

    async def _serve(self, stream: P2PStream, version: str) -> None:
        ms = MessageStream(stream, control.REQUEST_CODEC, limits=self.network.frame_limits())
        if not self.authorised(stream.remote_peer):
            log.warning("refused control request from unauthorised peer %s", stream.remote_peer)
            await ms.send_error(
                "unauthorised",
                f"client key {stream.remote_peer} is not authorised on this node "
                "(use the client.key of the node's home, or add it to control.allowed_clients)",
            )
            await ms.close()
            return
        try:
            request = await ms.receive_within(self.network.request_timeout_s)
        except ProtocolError as exc:
            log.info("bad control request from %s: %s", stream.remote_peer, logsafe(exc))
            try:
                await ms.send_error(exc.code, exc.message)
            finally:
                await ms.reset()
            return
        try:
            reply = await self.dispatch(request)
        except (WorkflowNotFoundError, _NotFound) as exc:
            await ms.send_error("not_found", str(exc))
        except (JournalError, StorageError) as exc:
            log.error("control request failed: %s", logsafe(exc))
            await ms.send_error("internal", f"the node could not read its journal: {exc}")
        except WorkflowError as exc:
            await ms.send_error("invalid_workflow", str(exc))
        else:
            obj = dump_for(reply, version)  # only the members the client's version knows
            await ms.stream.write(encode_frame(obj, self.network.max_frame_size))
        await ms.close()

    async def dispatch(self, request: Any) -> Any:
        if isinstance(request, control.InfoRequest):
            return control.Info(
                peer_id=self.host.peer_id,
                addrs=self.host.addrs(),
                tools=self.tools.names(),
                version=self.version,
                ray=self.ray_info,
            )
        if isinstance(request, control.SubmitRequest):
            spec = parse_workflow(request.workflow, source=request.source or "<submitted>")
            wid, created = await self.workflows.submit(spec, request.inputs, request.workflow_id)
            view = await self.workflows.view(wid)
            return control.Submitted(workflow_id=wid, status=view.status.value, created=created)
        if isinstance(request, control.StatusRequest):
            view = await self.workflows.view(request.workflow_id)
            return self._status_reply(view, await self._receipts(view.workflow_id))
        if isinstance(request, control.ResultRequest):
            if request.wait:
                view = await self.workflows.wait(request.workflow_id)
            else:
                view = await self.workflows.view(request.workflow_id)
            return control.WorkflowResult(
                workflow_id=view.workflow_id,
                status=view.status.value,
                outputs=view.outputs,
                error=view.error,
            )
        if isinstance(request, control.CancelRequest):
            view = await self.workflows.cancel(request.workflow_id)
            return self._status_reply(view)
        if isinstance(request, control.ResumeRequest):
            view = await self.workflows.resume(request.workflow_id)
            return self._status_reply(view)
        if isinstance(request, control.DeleteRequest):
            view = await self.workflows.delete(request.workflow_id)
            return control.WorkflowList(workflows=[_summary(view)])
        if isinstance(request, control.ListRequest):
            views = await self.workflows.list_all()
            return control.WorkflowList(workflows=[_summary(v) for v in views])
        if isinstance(request, control.PeersRequest):
            return self._peers()
        if isinstance(request, control.ToolsRequest):
            return control.Tools(tools=self._tools())
        if isinstance(request, control.HandoffsRequest):
            return control.Handoffs(handoffs=[_entry(j) for j in self.handoffs.jobs()])
        if isinstance(request, control.HandoffCancelRequest):
            stopped = self.handoffs.cancel_by_operator(request.handoff_id, request.peer)
            if not stopped:
                who = f" of peer {request.peer}" if request.peer else ""
                raise _NotFound(
                    f"no handoff {request.handoff_id!r}{who} is in flight on this node "
                    "(see 'hivemesh handoffs')"
                )
            return control.Handoffs(handoffs=[_entry(j) for j in stopped])
        raise AssertionError(f"unhandled control request {request!r}")

    async def _receipts(self, workflow_id: str) -> dict[tuple[str, str], dict[str, Any]]:
        """The checked receipts of the workflow's delegated steps, by (step, peer)."""
        records = await self.journal.call(self.journal.sync.steps_of, workflow_id)
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for r in records:  # latest first
            if r.step is not None and r.receipt is not None:
                found.setdefault((r.step, r.peer), r.receipt)
        return found

    def _peers(self) -> control.Peers:
        connected = self.host.connected_peers()
        now, wall = self.registry.now(), time.time()
        entries = []
        for p in self.registry.all():
            entries.append(
                control.PeerEntry(
                    peer_id=p.peer_id,
                    addrs=p.addrs,
                    tools=[t.name for t in p.card.tools] if p.card else [],
                    connected=p.peer_id in connected,
                    version=p.card.version if p.card else None,
                    last_seen=p.last_seen,
                    load=f"{p.card.load.running}/{p.card.load.capacity}" if p.card else None,
                    learned_from=p.learned_from,
                    evidence=self._evidence(p),
                    excluded=self._exclusion(p.peer_id, now, wall),
                )
            )
        listed = {e.peer_id for e in entries}
        for peer_id in self.registry.excluded_peers():
            if peer_id not in listed:  # forgotten since, but still kept out of placement
                entries.append(
                    control.PeerEntry(
                        peer_id=peer_id,
                        addrs=[],
                        tools=[],
                        connected=peer_id in connected,
                        excluded=self._exclusion(peer_id, now, wall),
                    )
                )
        return control.Peers(peers=sorted(entries, key=lambda e: e.peer_id))

    def _evidence(self, p: PeerState) -> control.PeerEvidence:
        mean = p.mean_run_ms()
        return control.PeerEvidence(
            done=p.done,
            failed=p.failed,
            recent_failures=self.registry.recent_failures(p.peer_id),
            outstanding=p.outstanding,
            sustained=p.sustained,
            mean_run_ms=round(mean, 1) if mean is not None else None,
            rtt_ms=round(p.rtt_ms, 1) if p.rtt_ms is not None else None,
        )

    def _exclusion(self, peer_id: str, now: float, wall: float) -> control.PeerExclusion | None:
        entry = self.registry.exclusion(peer_id)
        if entry is None:
            return None
        remaining = max(0.0, entry.until - now)
        return control.PeerExclusion(
            reason=entry.reason, remaining_s=round(remaining, 1), until=wall + remaining
        )

    @staticmethod
    def _status_reply(
        view: Any, receipts: dict[tuple[str, str], dict[str, Any]] | None = None
    ) -> control.WorkflowStatusReply:
        receipts = receipts or {}
        return control.WorkflowStatusReply(
            workflow_id=view.workflow_id,
            name=view.name,
            status=view.status.value,
            error=view.error,
            created_at=view.created_at,
            ended_at=view.ended_at,
            steps=[
                control.StepStatus(
                    name=s.name,
                    tool=s.tool,
                    status=s.status,
                    node=s.node,
                    reason=s.reason,
                    error=s.error,
                    attempts=s.attempts,
                    started_at=s.started_at,
                    ended_at=s.ended_at,
                    receipt=receipts.get((s.name, s.node or ""))
                    if s.status == "SUCCESSFUL"
                    else None,
                )
                for s in view.steps
            ],
        )

    def _tools(self) -> list[control.ToolEntry]:
        entries: dict[tuple[str, str], dict[str, Any]] = {}
        for t in self.tools:
            entries[(t.name, t.version)] = {
                "description": t.description,
                "providers": [self.host.peer_id],
            }
        for p in self.registry.all():
            if p.card is None or not self.registry.has_fresh_card(p.peer_id):
                continue
            for card in p.card.tools:
                entry = entries.setdefault(
                    (card.name, card.version), {"description": card.description, "providers": []}
                )
                entry["providers"].append(p.peer_id)
        return [
            control.ToolEntry(name=name, version=version, **entry)
            for (name, version), entry in sorted(entries.items())
        ]


def _summary(view: WorkflowView) -> control.WorkflowSummary:
    return control.WorkflowSummary(
        workflow_id=view.workflow_id,
        name=view.name,
        status=view.status.value,
        created_at=view.created_at,
    )


def _entry(job: JobInfo) -> control.HandoffEntry:
    return control.HandoffEntry(
        peer=job.peer,
        handoff_id=job.handoff_id,
        epoch=job.epoch,
        tool=job.tool,
        workflow_id=job.workflow_id,
        step=job.step,
        state=job.state,
        age_s=round(job.age_s, 3),
        deadline_s=job.deadline_s,
        running_s=None if job.running_s is None else round(job.running_s, 3),
    )
