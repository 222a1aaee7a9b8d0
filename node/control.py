"""Control service: what the CLI (or any authorised client) asks a node."""

from __future__ import annotations

import logging
from typing import Any

from node.config import ControlConfig, NetworkConfig
from node.handoff.journal import JournalError
from node.p2p import P2PHost, P2PStream
from node.registry import PeerRegistry
from node.workflow_service import WorkflowService
from protocols import control, logsafe
from protocols.errors import ProtocolError
from protocols.stream import MessageStream
from workflows._storage import StorageError
from workflows.dsl import parse_workflow
from workflows.errors import WorkflowError, WorkflowNotFoundError
from workflows.tools import ToolRegistry

log = logging.getLogger(__name__)


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
        ray_info: control.RayInfo | None = None,
    ) -> None:
        self.host = host
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
        ms = MessageStream(
            stream, control.REQUEST_CODEC, max_frame_size=self.network.max_frame_size
        )
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
        except WorkflowNotFoundError as exc:
            await ms.send_error("not_found", str(exc))
        except (JournalError, StorageError) as exc:
            log.error("control request failed: %s", logsafe(exc))
            await ms.send_error("internal", f"the node could not read its journal: {exc}")
        except WorkflowError as exc:
            await ms.send_error("invalid_workflow", str(exc))
        else:
            await ms.send(reply)
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
            return self._status_reply(await self.workflows.view(request.workflow_id))
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
        if isinstance(request, control.ListRequest):
            views = await self.workflows.list_all()
            return control.WorkflowList(
                workflows=[
                    control.WorkflowSummary(
                        workflow_id=v.workflow_id,
                        name=v.name,
                        status=v.status.value,
                        created_at=v.created_at,
                    )
                    for v in views
                ]
            )
        if isinstance(request, control.PeersRequest):
            connected = self.host.connected_peers()
            return control.Peers(
                peers=[
                    control.PeerEntry(
                        peer_id=p.peer_id,
                        addrs=p.addrs,
                        tools=[t.name for t in p.card.tools] if p.card else [],
                        connected=p.peer_id in connected,
                        version=p.card.version if p.card else None,
                        last_seen=p.last_seen,
                    )
                    for p in self.registry.all()
                ]
            )
        if isinstance(request, control.ToolsRequest):
            return control.Tools(tools=self._tools())
        raise AssertionError(f"unhandled control request {request!r}")

    @staticmethod
    def _status_reply(view: Any) -> control.WorkflowStatusReply:
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
