"""Control requests and their responses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictInt

from protocols.versioning import since
from protocols.wire import MAX_ID_LEN, MessageCodec, WireModel

PROTOCOL_ID = "/hivemesh/control/0.5.0"
LEGACY_PROTOCOL_IDS = (
    "/hivemesh/control/0.4.0",
    "/hivemesh/control/0.3.0",
    "/hivemesh/control/0.2.0",
    "/hivemesh/control/0.1.0",
)
"""Older minor versions a node still serves (docs/protocols.md §3.1)."""
MAX_WORKFLOW_TEXT = 1024 * 1024
WATCH_VERSION = "0.3.0"
"""The version that added ``watch`` (and its ``watching``, ``event`` and ``heartbeat``
answers) and the heartbeats of a ``result`` wait."""
EXPLAIN_VERSION = "0.4.0"
"""The version that added ``status``'s ``explain`` and a step's ``placement``."""
REGISTRY_VERSION = "0.5.0"
"""The version that added ``workflows`` (the node's registered workflows) and ``run``."""
MAX_PLACEMENT_CANDIDATES = 8
MAX_EXPLAINED_STEPS = 1000
"""A ``status`` with ``explain`` carries the ``placement`` of at most this many steps."""

__all__ = [
    "CODEC",
    "EXPLAIN_VERSION",
    "LEGACY_PROTOCOL_IDS",
    "MAX_EXPLAINED_STEPS",
    "MAX_PLACEMENT_CANDIDATES",
    "MAX_SHOWN_DEFAULT_BYTES",
    "MAX_SHOWN_DEFAULT_DEPTH",
    "PROTOCOL_ID",
    "REGISTRY_VERSION",
    "REQUEST_CODEC",
    "RESPONSE_CODEC",
    "WATCH_VERSION",
    "CancelRequest",
    "DeleteRequest",
    "HandoffCancelRequest",
    "HandoffEntry",
    "Handoffs",
    "HandoffsRequest",
    "Heartbeat",
    "Info",
    "InfoRequest",
    "ListRequest",
    "PeerEntry",
    "PeerEvidence",
    "PeerExclusion",
    "Peers",
    "PeersRequest",
    "Placement",
    "PlacementCandidate",
    "ProgressEvent",
    "RayInfo",
    "RegisteredInput",
    "RegisteredWorkflow",
    "RegistryProblem",
    "ResultRequest",
    "ResumeRequest",
    "RunRequest",
    "StatusRequest",
    "StepProgress",
    "StepStatus",
    "SubmitRequest",
    "Submitted",
    "ToolEntry",
    "Tools",
    "ToolsRequest",
    "WatchRequest",
    "Watching",
    "WorkflowList",
    "WorkflowResult",
    "WorkflowStatusReply",
    "WorkflowSummary",
    "Workflows",
    "WorkflowsRequest",
]

# --- requests -------------------------------------------------------------------------------


class InfoRequest(WireModel):
    type: Literal["info"] = "info"


class SubmitRequest(WireModel):
    type: Literal["submit"] = "submit"
    workflow: str = Field(max_length=MAX_WORKFLOW_TEXT, description="the workflow YAML text")
    source: str | None = Field(default=None, max_length=1024)
    inputs: dict[str, Any] = Field(default_factory=dict)
    workflow_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LEN)


class StatusRequest(WireModel):
    type: Literal["status"] = "status"
    workflow_id: str = Field(max_length=MAX_ID_LEN)
    explain: bool = Field(
        default=False,
        description="also send each step's placement: the candidates and their scores",
        json_schema_extra=since("0.4.0"),
    )


class ResultRequest(WireModel):
    type: Literal["result"] = "result"
    workflow_id: str = Field(max_length=MAX_ID_LEN)
    wait: bool = False


class CancelRequest(WireModel):
    type: Literal["cancel"] = "cancel"
    workflow_id: str = Field(max_length=MAX_ID_LEN)


class ResumeRequest(WireModel):
    """Resume a workflow by hand (a QUARANTINED one too); answered with its ``status``.
    Added within 0.2.0 (docs/protocols.md §3.1): a node that predates it answers
    ``unknown_type``."""

    type: Literal["resume"] = "resume"
    workflow_id: str = Field(max_length=MAX_ID_LEN)


class DeleteRequest(WireModel):
    """Delete a workflow that is not running; answered with a ``list`` of the deleted
    workflow as it was. Added within 0.2.0, like ``resume``."""

    type: Literal["delete"] = "delete"
    workflow_id: str = Field(max_length=MAX_ID_LEN)


class WatchRequest(WireModel):
    """Stream the workflow's events (docs/protocols.md §10.8). Since 0.3.0."""

    type: Literal["watch"] = "watch"
    workflow_id: str = Field(max_length=MAX_ID_LEN)
    since: StrictInt = Field(default=0, ge=0, description="send the events after this seq")


class ListRequest(WireModel):
    type: Literal["list"] = "list"


class PeersRequest(WireModel):
    type: Literal["peers"] = "peers"


class ToolsRequest(WireModel):
    type: Literal["tools"] = "tools"


class HandoffsRequest(WireModel):
    """What peers are running on this node."""

    type: Literal["handoffs"] = "handoffs"


class HandoffCancelRequest(WireModel):
    """Stop a step a peer runs on this node (of ``peer``, or of any peer with that id)."""

    type: Literal["handoff_cancel"] = "handoff_cancel"
    handoff_id: str = Field(min_length=1, max_length=MAX_ID_LEN)
    peer: str | None = Field(default=None, max_length=MAX_ID_LEN)


class WorkflowsRequest(WireModel):
    """The workflows the node registered at start (its workflows folders, packages).
    Since 0.5.0."""

    type: Literal["workflows"] = "workflows"


class RunRequest(WireModel):
    """Start a registered workflow by its id; answered like ``submit``. Since 0.5.0."""

    type: Literal["run"] = "run"
    workflow: str = Field(min_length=1, max_length=MAX_ID_LEN, description="its registered id")
    inputs: dict[str, Any] = Field(default_factory=dict)
    workflow_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ID_LEN,
        description="the run's id (idempotent, as for submit); null: the node generates one",
    )


# --- responses ------------------------------------------------------------------------------


class RayInfo(WireModel):
    """The Ray a node runs its workflow steps on."""

    address: str | None = Field(description="its GCS address (host:port)")
    joined: bool = Field(description="true: an existing cluster (ray.address); false: its own")
    cpus: StrictInt | None = Field(default=None, description="CPUs the Ray cluster has")


class Info(WireModel):
    type: Literal["info"] = "info"
    peer_id: str
    addrs: list[str]
    tools: list[str]
    version: str
    ray: RayInfo | None = Field(default=None, description="absent from nodes that do not report it")


class Submitted(WireModel):
    type: Literal["submitted"] = "submitted"
    workflow_id: str
    status: str
    created: bool = Field(description="false when the id already existed (idempotent submit)")


class PlacementCandidate(WireModel):
    """One node a step's placement considered, as placement saw it (docs/protocols.md
    §10.4)."""

    node: str = Field(max_length=MAX_ID_LEN, description="its peer id")
    local: bool = Field(description="the node answering (it offers the tool itself)")
    running: StrictInt = Field(ge=0, description="its load as placement believed it")
    capacity: StrictInt = Field(ge=0, description="its capacity as placement believed it")
    note: str = Field(
        max_length=200,
        description="'chosen', 'free', 'busy', 'tried' (failed for this step), 'excluded: …'",
    )
    done: StrictInt = Field(default=0, ge=0, description="steps it completed for this node")
    failed: StrictInt = Field(default=0, ge=0, description="steps it lost or broke")
    recent_failures: StrictInt = Field(default=0, ge=0)
    run_ms: float | None = Field(default=None, description="its measured run time of the tool")
    rtt_ms: float | None = Field(default=None, description="measured round-trip time")
    est_ms: float | None = Field(default=None, description="estimated completion time")


class Placement(WireModel):
    """How a step's last placement was decided: the candidates, the chosen one first."""

    candidates: list[PlacementCandidate] = Field(max_length=MAX_PLACEMENT_CANDIDATES)


class StepStatus(WireModel):
    name: str
    tool: str
    status: str
    node: str | None = None
    reason: str | None = None
    error: str | None = None
    attempts: StrictInt = 0
    started_at: float | None = None
    ended_at: float | None = None
    waiting: str | None = Field(
        default=None,
        description="why the step cannot run now (e.g. 'waiting: all providers of util busy')",
        json_schema_extra=since("0.3.0"),
    )
    receipt: dict[str, Any] | None = Field(
        default=None,
        description="for a delegated step: the receipt the node that ran it signed (the "
        "signed object and its signature), as checked and journaled by this node",
    )
    placement: Placement | None = Field(
        default=None,
        description="only when the request asked to 'explain': how the step's last "
        "placement was decided",
        json_schema_extra=since("0.4.0"),
    )


class WorkflowStatusReply(WireModel):
    type: Literal["status"] = "status"
    workflow_id: str
    name: str
    status: str
    error: str | None = None
    created_at: float
    ended_at: float | None = None
    steps: list[StepStatus]


class WorkflowResult(WireModel):
    type: Literal["result"] = "result"
    workflow_id: str
    status: str
    outputs: dict[str, Any] | None = None
    error: str | None = None


class WorkflowSummary(WireModel):
    workflow_id: str
    name: str
    status: str
    created_at: float


class WorkflowList(WireModel):
    type: Literal["list"] = "list"
    workflows: list[WorkflowSummary]


MAX_SHOWN_DEFAULT_BYTES = 1024
"""A registered input's default larger than this (as JSON), or nested deeper than
:data:`MAX_SHOWN_DEFAULT_DEPTH`, is not sent in ``workflows`` (``default_omitted``)."""
MAX_SHOWN_DEFAULT_DEPTH = 8


class RegisteredInput(WireModel):
    name: str
    required: bool
    default: Any = None
    default_omitted: bool = Field(
        default=False, description="the default is too large or too deep to send here"
    )
    description: str | None = None


class RegisteredWorkflow(WireModel):
    """A workflow the node registered: what it is, its inputs and where it came from."""

    workflow: str = Field(description="its id (what 'run' takes)")
    name: str
    description: str | None = None
    inputs: list[RegisteredInput]
    source: str = Field(description="the file's path, or 'package:<distribution>'")
    file: str = Field(description="the file's path")
    schedule: str | None = Field(
        default=None, description="when it runs by itself, in words ('at start, every 10m')"
    )


class RegistryProblem(WireModel):
    """A workflow file the node skipped, and why."""

    source: str
    error: str


class Workflows(WireModel):
    type: Literal["workflows"] = "workflows"
    workflows: list[RegisteredWorkflow]
    problems: list[RegistryProblem]
    problems_dropped: StrictInt = Field(default=0, description="problems beyond those listed")
    workflows_dropped: StrictInt = Field(
        default=0, description="registered workflows beyond what one answer carries"
    )


class PeerEvidence(WireModel):
    """What the node measured of a peer running its steps (not what the peer claims)."""

    done: StrictInt = Field(description="steps it completed for this node with a valid result")
    failed: StrictInt = Field(description="steps it lost, broke or answered with an invalid result")
    recent_failures: StrictInt = Field(description="failures in a row, if the last was recent")
    outstanding: StrictInt = Field(description="this node's steps it runs now")
    sustained: StrictInt = Field(
        description="the most of this node's steps it had at once when one succeeded"
    )
    mean_run_ms: float | None = Field(
        default=None, description="mean observed run time (offer to result), over its tools"
    )
    rtt_ms: float | None = Field(default=None, description="smoothed offer-to-accept time")


class PeerExclusion(WireModel):
    """Why and until when the node gives the peer no steps."""

    reason: str
    remaining_s: float = Field(description="seconds until the exclusion ends")
    until: float = Field(description="when it ends (Unix time)")


class PeerEntry(WireModel):
    peer_id: str
    addrs: list[str]
    tools: list[str]
    connected: bool
    version: str | None = None
    last_seen: float | None = None
    load: str | None = Field(
        default=None,
        description="the load its card claims, 'running/capacity' (a hint only)",
        json_schema_extra=since("0.2.0"),
    )
    learned_from: str | None = Field(
        default=None,
        description="the peer whose word alone it is known on (peer exchange), if any",
        json_schema_extra=since("0.2.0"),
    )
    evidence: PeerEvidence | None = Field(default=None, json_schema_extra=since("0.2.0"))
    excluded: PeerExclusion | None = Field(default=None, json_schema_extra=since("0.2.0"))


class Peers(WireModel):
    type: Literal["peers"] = "peers"
    peers: list[PeerEntry]


class ToolEntry(WireModel):
    name: str
    version: str
    description: str
    providers: list[str] = Field(description="peer ids offering it; this node's id if local")


class Tools(WireModel):
    type: Literal["tools"] = "tools"
    tools: list[ToolEntry]


class HandoffEntry(WireModel):
    peer: str = Field(description="the peer that offered the step")
    handoff_id: str
    epoch: StrictInt
    tool: str
    workflow_id: str
    step: str
    state: Literal["waiting", "running", "stopping"]
    age_s: float = Field(description="since the offer was accepted")
    deadline_s: float
    running_s: float | None = Field(description="since it started to run; null while waiting")


class Handoffs(WireModel):
    """Answers ``handoffs`` (all in flight) and ``handoff_cancel`` (those stopped)."""

    type: Literal["handoffs"] = "handoffs"
    handoffs: list[HandoffEntry]


class StepProgress(WireModel):
    name: str
    tool: str
    status: str
    node: str | None = None
    waiting: str | None = None


class Watching(WireModel):
    """The first answer to ``watch``: where the workflow stands, and from which event on."""

    type: Literal["watching"] = "watching"
    workflow_id: str
    name: str
    status: str
    error: str | None = None
    seq: StrictInt = Field(
        description="the newest event's seq when the snapshot was taken (0: none)"
    )
    missed: StrictInt = Field(description="events after 'since' this node no longer keeps")
    reset: bool = Field(
        description="true: 'since' is beyond this node's log of the workflow (the node "
        "restarted or forgot it); seqs start again, rebuild from 'steps'"
    )
    steps: list[StepProgress]


class ProgressEvent(WireModel):
    """One event of a watched workflow (``kind``: docs/protocols.md §10.8)."""

    type: Literal["event"] = "event"
    workflow_id: str
    seq: StrictInt
    time: float
    kind: str
    step: str | None = None
    tool: str | None = None
    node: str | None = None
    reason: str | None = None
    error: str | None = None
    status: str | None = None


class Heartbeat(WireModel):
    """Sent on an idle ``watch`` stream and during a ``result`` wait: the node is alive."""

    type: Literal["heartbeat"] = "heartbeat"
    time: float
    seq: StrictInt | None = Field(default=None, description="on a watch: the newest event's seq")


ControlRequest = (
    InfoRequest
    | SubmitRequest
    | StatusRequest
    | ResultRequest
    | CancelRequest
    | ResumeRequest
    | DeleteRequest
    | ListRequest
    | PeersRequest
    | ToolsRequest
    | HandoffsRequest
    | HandoffCancelRequest
    | WatchRequest
    | WorkflowsRequest
    | RunRequest
)
ControlResponse = (
    Info
    | Submitted
    | WorkflowStatusReply
    | WorkflowResult
    | WorkflowList
    | Peers
    | Tools
    | Handoffs
    | Watching
    | ProgressEvent
    | Heartbeat
    | Workflows
)

REQUEST_CODEC: MessageCodec[ControlRequest] = MessageCodec(
    "control",
    [
        InfoRequest,
        SubmitRequest,
        StatusRequest,
        ResultRequest,
        CancelRequest,
        ResumeRequest,
        DeleteRequest,
        ListRequest,
        PeersRequest,
        ToolsRequest,
        HandoffsRequest,
        HandoffCancelRequest,
        WatchRequest,
        WorkflowsRequest,
        RunRequest,
    ],
)
RESPONSE_CODEC: MessageCodec[ControlResponse] = MessageCodec(
    "control",
    [
        Info,
        Submitted,
        WorkflowStatusReply,
        WorkflowResult,
        WorkflowList,
        Peers,
        Tools,
        Handoffs,
        Watching,
        ProgressEvent,
        Heartbeat,
        Workflows,
    ],
)
CODEC = REQUEST_CODEC
