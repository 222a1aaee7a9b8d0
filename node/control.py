"""Control service: what the CLI (or any authorised client) asks a node.

A ``submit`` is answered in bounded time whatever the file: the YAML is parsed in a worker
process within ``workflow_files`` (node.parse_pool), and the workflow is created by a
task of this service that outlives the request. The node waits ``control.submit_wait_s``
for the creation; past that it answers ``PENDING`` with the workflow's id (chosen by the
client, or by the node before it answers), and the creation goes on. Until it ends, a
``status`` of that id answers ``PENDING``, a ``result`` with ``wait`` and a ``cancel``
wait for it, and a ``submit`` with the same id joins it; if it fails, they get the
failure as an ``internal`` error, and a new ``submit`` with the id tries again
(docs/protocols.md §10.3).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from pydantic import ValidationError

from node.config import ControlConfig, NetworkConfig, WorkflowFilesConfig
from node.errors import ParserBusyError, ParseWorkerError
from node.handoff.journal import AsyncHandoffJournal, JournalError
from node.handoff.server import HandoffServer, JobInfo
from node.p2p import P2PHost
from node.parse_pool import ParsePool
from node.progress import ProgressHub
from node.registry import PeerRegistry, PeerState
from node.watch import WatchService, hub_from
from node.workflow_registry import WorkflowRegistry
from node.workflow_service import WorkflowService, WorkflowView
from protocols import control, logsafe
from protocols.errors import ProtocolError
from protocols.framing import encode_frame
from protocols.stream import ByteStream, MessageStream
from protocols.versioning import dump_for, parse_version, version_of
from workflows.dsl import WorkflowSpec
from workflows.engine.storage import StorageError
from workflows.errors import WorkflowError, WorkflowNotFoundError
from workflows.tools import ToolRegistry

log = logging.getLogger(__name__)


class _NotFound(Exception):
    """A request about something this node does not have (wire code ``not_found``)."""


class _CreationFailed(Exception):
    """A workflow accepted with ``PENDING`` could not be created (wire code ``internal``)."""


class ControlStream(ByteStream, Protocol):
    """A control stream, from libp2p (node.p2p.P2PStream) or from the local control socket
    (node.control_socket.LocalStream): bytes, and the client identity on the other end."""

    remote_peer: str


_FAILED_KEPT = 256  # failed creations remembered, for the clients that were told PENDING


@dataclass
class _Creation:
    """A workflow being created: the submits that asked for it wait on ``done``."""

    workflow_id: str
    spec: WorkflowSpec
    accepted_at: float  # Unix time
    done: trio.Event = field(default_factory=trio.Event)
    created: bool = False
    error: Exception | None = None
    metadata: dict[str, Any] | None = None  # journaled with the workflow


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
        workflow_files: WorkflowFilesConfig | None = None,
        progress: ProgressHub | None = None,
        workflow_registry: WorkflowRegistry | None = None,
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
        self.submit_wait_s = config.submit_wait_s
        limits = workflow_files or WorkflowFilesConfig()
        self.parser = ParsePool(
            limits.parse_limits(), workers=limits.workers, memory_mb=limits.worker_memory_mb
        )
        self._creations: dict[str, _Creation] = {}
        self._failed: OrderedDict[str, str] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self.progress = progress if progress is not None else hub_from(config)
        self.watches = WatchService(self.progress, workflows, config, network)
        # the workflows registered at start (node.workflow_registry): 'workflows', 'run'
        self.registered = workflow_registry if workflow_registry is not None else WorkflowRegistry()

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run the parse workers and the creations of submitted workflows until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.parser.serve)
                await nursery.start(self.watches.serve)
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def authorised(self, peer: str) -> bool:
        return self.allow_any or peer in self.allowed

    async def handle(self, stream: ControlStream) -> None:
        """Serve one control stream of the current version (libp2p's, or a connection of
        the local control socket)."""
        await self._serve(stream, version_of(control.PROTOCOL_ID))

    def legacy_handler(self, protocol_id: str) -> Callable[[ControlStream], Awaitable[None]]:
        """A handler for an older minor version of the protocol (docs/protocols.md §3.1)."""
        version = version_of(protocol_id)

        async def handle(stream: ControlStream) -> None:
            await self._serve(stream, version)

        return handle

    async def refuse(self, stream: ControlStream, why: str) -> None:
        """Answer a client that may not use this node with ``unauthorised``, before reading
        its request, and close the stream (docs/protocols.md §10.1)."""
        ms = MessageStream(stream, control.REQUEST_CODEC, limits=self.network.frame_limits())
        await ms.send_error("unauthorised", why)
        await ms.close()

    async def _serve(self, stream: ControlStream, version: str) -> None:
        if not self.authorised(stream.remote_peer):
            log.warning("refused control request from unauthorised peer %s", stream.remote_peer)
            await self.refuse(
                stream,
                f"client key {stream.remote_peer} is not authorised on this node "
                "(use the client.key of the node's home, or add it to control.allowed_clients)",
            )
            return
        ms = MessageStream(stream, control.REQUEST_CODEC, limits=self.network.frame_limits())
        try:
            request = await ms.receive_within(self.network.request_timeout_s)
        except ProtocolError as exc:
            log.info("bad control request from %s: %s", stream.remote_peer, logsafe(exc))
            try:
                await ms.send_error(exc.code, exc.message)
            finally:
                await ms.reset()
            return
        newer = parse_version(version) >= parse_version(control.WATCH_VERSION)
        registry_known = parse_version(version) >= parse_version(control.REGISTRY_VERSION)
        try:
            if isinstance(request, control.WorkflowsRequest | control.RunRequest) and not (
                registry_known
            ):  # (an older client never sends them)
                await ms.send_error("unknown_type", f"{request.type} needs control 0.5.0")
                await ms.close()
                return
            if isinstance(request, control.WatchRequest):
                if not newer:  # (an older client never sends it)
                    await ms.send_error("unknown_type", "watch needs control 0.3.0")
                else:
                    await self.watches.serve_watch(
                        ms, stream.remote_peer, request, version, self._watching
                    )
                await ms.close()
                return
            if isinstance(request, control.ResultRequest) and request.wait and newer:
                # a long wait: heartbeats keep the client's stream from going idle
                alive, reply = await self.watches.with_heartbeats(
                    ms, lambda: self.dispatch(request)
                )
                if not alive:
                    await ms.reset()
                    return
            else:
                reply = await self.dispatch(request)
        except (WorkflowNotFoundError, _NotFound) as exc:
            await ms.send_error("not_found", str(exc))
        except (JournalError, StorageError) as exc:
            log.error("control request failed: %s", logsafe(exc))
            await ms.send_error("internal", f"the node could not read its journal: {exc}")
        except WorkflowError as exc:
            await ms.send_error("invalid_workflow", str(exc))
        except ParserBusyError as exc:
            await ms.send_error("busy", str(exc))
        except (ParseWorkerError, _CreationFailed) as exc:
            await ms.send_error("internal", str(exc))
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
            return await self._submit(request)
        if isinstance(request, control.StatusRequest):
            creation = self._pending(request.workflow_id)
            if creation is not None:
                return self._pending_status(creation)
            view = await self.workflows.view(request.workflow_id)
            return self._status_reply(
                view, await self._receipts(view.workflow_id), explain=request.explain
            )
        if isinstance(request, control.ResultRequest):
            creation = self._pending(request.workflow_id)
            if creation is not None and not request.wait:
                return control.WorkflowResult(workflow_id=creation.workflow_id, status="PENDING")
            if creation is not None:
                await self._created(creation)
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
            creation = self._pending(request.workflow_id)
            if creation is not None:
                await self._created(creation)
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
        if isinstance(request, control.WorkflowsRequest):
            return self._registered()
        if isinstance(request, control.RunRequest):
            return await self._run(request)
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

    # -- submit ---------------------------------------------------------------------------

    async def _submit(self, request: control.SubmitRequest) -> control.Submitted:
        # (the client's name for the file is quoted in errors and logs: printable only)
        source = "".join(c if c.isprintable() else "?" for c in request.source or "<submitted>")
        spec = await self.parser.parse(request.workflow, source)
        if spec.sub_workflows():
            if not self.registered.loaded:
                raise ParserBusyError("the node is still registering its workflows; try again")
            self.registered.check_sub_workflows(spec)
        # (in a thread: binding deep-copies defaults, which may be large)
        bound = await trio.to_thread.run_sync(spec.bind_inputs, request.inputs)
        wid = request.workflow_id or f"{spec.id}-{uuid.uuid4().hex[:12]}"
        return await self.start(spec, bound, wid)

    async def _run(self, request: control.RunRequest) -> control.Submitted:
        """Start a registered workflow (answered as a submit)."""
        entry = self.registered.get(request.workflow)
        if entry is None:
            raise _NotFound(str(self.registered.unknown(request.workflow)))
        bound = await trio.to_thread.run_sync(entry.spec.bind_inputs, request.inputs)
        wid = request.workflow_id or f"{entry.spec.id}-{uuid.uuid4().hex[:12]}"
        return await self.start(entry.spec, bound, wid)

    async def wait_created(self, workflow_id: str) -> None:
        """Wait until a workflow that :meth:`start` answered ``PENDING`` is created; raises
        what its creation raised."""
        creation = self._pending(workflow_id)
        if creation is not None:
            await self._created(creation)
            if isinstance(creation.error, WorkflowError):
                raise creation.error

    def _registered(self) -> control.Workflows:
        """The ``workflows`` answer: within half a frame for the workflows (large or deep
        defaults left out: ``default_omitted``), the rest counted in ``workflows_dropped``."""
        reg = self.registered
        budget = self.network.max_frame_size // 2
        listed: list[control.RegisteredWorkflow] = []
        for r in reg.all():
            entry = control.RegisteredWorkflow(
                workflow=r.spec.id,
                name=r.spec.name,
                description=r.spec.description,
                inputs=[_registered_input(i) for i in r.spec.inputs],
                source=r.source,
                file=r.path,
                schedule=r.spec.run.describe() if r.spec.run is not None else None,
            )
            budget -= len(entry.model_dump_json())
            if budget < 0:
                break
            listed.append(entry)
        problems, room = [], self.network.max_frame_size // 4
        for p in reg.problems:
            room -= len(p.source) + len(p.error) + 64
            if room < 0:
                break
            problems.append(control.RegistryProblem(source=p.source, error=p.error))
        return control.Workflows(
            workflows=listed,
            problems=problems,
            problems_dropped=reg.problems_dropped + len(reg.problems) - len(problems),
            workflows_dropped=len(reg.workflows) - len(listed),
        )

    async def start(
        self,
        spec: WorkflowSpec,
        bound: dict[str, Any],
        wid: str,
        metadata: dict[str, Any] | None = None,
    ) -> control.Submitted:
        """Create workflow ``wid`` of ``spec`` with the ``bound`` inputs, idempotently (the
        path of every submit: control's, a ``run``, a schedule's, a sub-workflow's); wait up
        to ``control.submit_wait_s`` for it to be created."""
        creation = self._creations.get(wid)
        joined = creation is not None
        if creation is None:
            if self._nursery is None:
                raise ParserBusyError("the node is starting or stopping; try again in a moment")
            creation = _Creation(wid, spec, time.time(), metadata=metadata)
            self._creations[wid] = creation
            self._failed.pop(wid, None)
            self._nursery.start_soon(self._create, creation, bound)
        with trio.move_on_after(self.submit_wait_s):
            await creation.done.wait()
        if not creation.done.is_set():
            log.info("workflow %r accepted; still being created after %gs", wid, self.submit_wait_s)
            return control.Submitted(workflow_id=wid, status="PENDING", created=not joined)
        if isinstance(creation.error, WorkflowError | JournalError | StorageError):
            raise creation.error  # (answered with its own code)
        if creation.error is not None:
            raise _CreationFailed(
                f"workflow {wid!r} could not be created "
                f"({type(creation.error).__name__}: {creation.error})"
            )
        view = await self.workflows.view(wid)
        return control.Submitted(
            workflow_id=wid, status=view.status.value, created=creation.created and not joined
        )

    async def _create(self, creation: _Creation, inputs: dict[str, Any]) -> None:
        wid = creation.workflow_id
        try:
            _, creation.created = await self.workflows.submit(
                creation.spec, inputs, wid, creation.metadata
            )
            if creation.created and self.progress.finished(wid) is None:
                for step in creation.spec.steps:  # (those not started already)
                    if not self.progress.knows(wid, step.name):
                        tool = step.tool.partition("@")[0]
                        self.progress.step(wid, step.name, "pending", tool=tool)
        except Exception as exc:  # recorded whatever it is: a client may have been told PENDING
            creation.error = exc
            if not isinstance(exc, WorkflowError | JournalError | StorageError):
                log.exception("creating workflow %r failed", wid)
            self._failed[wid] = f"{type(exc).__name__}: {exc}"
            while len(self._failed) > _FAILED_KEPT:
                self._failed.popitem(last=False)
        finally:
            if self._creations.get(wid) is creation:
                del self._creations[wid]
            creation.done.set()

    def _pending(self, workflow_id: str) -> _Creation | None:
        """The creation of ``workflow_id`` if it is under way; raises if it failed."""
        creation = self._creations.get(workflow_id)
        if creation is None and workflow_id in self._failed:
            raise _CreationFailed(
                f"workflow {workflow_id!r} was accepted but could not be created "
                f"({self._failed[workflow_id]}); submit it again with the same id"
            )
        return creation

    async def _created(self, creation: _Creation) -> None:
        await creation.done.wait()
        self._pending(creation.workflow_id)  # raises if it failed

    @staticmethod
    def _pending_status(creation: _Creation) -> control.WorkflowStatusReply:
        return control.WorkflowStatusReply(
            workflow_id=creation.workflow_id,
            name=creation.spec.name,
            status="PENDING",
            created_at=creation.accepted_at,
            steps=[
                control.StepStatus(name=s.name, tool=s.tool, status="PENDING")
                for s in creation.spec.steps
            ],
        )

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

    def _status_reply(
        self,
        view: Any,
        receipts: dict[tuple[str, str], dict[str, Any]] | None = None,
        *,
        explain: bool = False,
    ) -> control.WorkflowStatusReply:
        receipts = receipts or {}
        # (bounded: the placements of the first MAX_EXPLAINED_STEPS steps that have one)
        explained = [s.name for s in view.steps if s.placement][: control.MAX_EXPLAINED_STEPS]
        explain_steps = set(explained) if explain else set()
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
                    waiting=self._waiting(view.workflow_id, s.name, s.status),
                    receipt=receipts.get((s.name, s.node or ""))
                    if s.status == "SUCCESSFUL"
                    else None,
                    placement=_placement(s.placement) if s.name in explain_steps else None,
                )
                for s in view.steps
            ],
        )

    def _waiting(self, workflow_id: str, step: str, status: str) -> str | None:
        if status not in ("PENDING", "RUNNING"):
            return None
        return self.progress.waiting(workflow_id, step)

    async def _watching(self, workflow_id: str) -> control.Watching:
        """Where a watched workflow stands (``seq``, ``missed``, ``reset`` are the watch's)."""
        creation = self._pending(workflow_id)
        if creation is not None:
            steps = [
                control.StepProgress(name=s.name, tool=s.tool.partition("@")[0], status="PENDING")
                for s in creation.spec.steps
            ]
            name, status, error = creation.spec.name, "PENDING", None
        else:
            view = await self.workflows.view(workflow_id)
            steps = [
                control.StepProgress(
                    name=s.name,
                    tool=s.tool,
                    status=s.status,
                    node=s.node,
                    waiting=self._waiting(workflow_id, s.name, s.status),
                )
                for s in view.steps
            ]
            name, status, error = view.name, view.status.value, view.error
        return control.Watching(
            workflow_id=workflow_id,
            name=name,
            status=status,
            error=error,
            seq=0,
            missed=0,
            reset=False,
            steps=steps,
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


def _registered_input(spec: Any) -> control.RegisteredInput:
    """A registered workflow's input as listed: its default only if it is small and shallow
    (it must fit a frame, and any client's nesting limit)."""
    default, omitted = spec.default, False
    try:
        text = json.dumps(default, separators=(",", ":"))
    except (TypeError, ValueError):
        text = None
    if (
        text is None
        or len(text) > control.MAX_SHOWN_DEFAULT_BYTES
        or (_depth(default) > control.MAX_SHOWN_DEFAULT_DEPTH)
    ):
        default, omitted = None, True
    return control.RegisteredInput(
        name=spec.name,
        required=spec.required,
        default=default,
        default_omitted=omitted,
        description=spec.description,
    )


def _depth(value: Any) -> int:
    """How deeply lists and mappings nest in ``value`` (a scalar: 0)."""
    depth, level = 0, [value]
    while level:
        containers = [v for v in level if isinstance(v, list | dict)]
        if not containers:
            break
        depth += 1
        level = [item for c in containers for item in (c.values() if isinstance(c, dict) else c)]
    return depth


def _placement(stored: dict[str, Any] | None) -> control.Placement | None:
    """A step's journaled placement detail as sent: None if absent or not what this version
    wrote (a journal is local, but it outlives versions)."""
    if not stored:
        return None
    try:
        return control.Placement.model_validate(stored)
    except ValidationError:
        return None


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
