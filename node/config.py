"""Node configuration: one pydantic model, loaded once.

Precedence: command-line flags > ``HIVEMESH_*`` environment > the YAML config file >
defaults. Environment names: ``HIVEMESH_<FIELD>`` for top-level fields
(``HIVEMESH_TOOLS=text,math``) and ``HIVEMESH_<SECTION>__<FIELD>`` for nested ones
(``HIVEMESH_RAY__NUM_CPUS=2``). List values are comma-separated or JSON.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from node.errors import ConfigError
from node.p2p.guard import GuardLimits
from protocols.limits import (
    DEFAULT_MAX_CONTAINERS,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_MEMBERS,
    DEFAULT_MAX_NUMBER_DIGITS,
    MAX_DEPTH_CEILING,
    MAX_DIGITS_CEILING,
    FrameLimits,
)
from workflows.dsl import ParseLimits
from workflows.engine.limits import StepLimits

log = logging.getLogger(__name__)

ENV_PREFIX = "HIVEMESH_"
MAX_CONFIG_BYTES = 1024 * 1024  # a config file is a page or two
DEFAULT_LISTEN = "/ip4/127.0.0.1/tcp/0"


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkConfig(_Section):
    listen: list[str] = Field(default_factory=lambda: [DEFAULT_LISTEN])
    # a listen address with port 0 takes the port it had at the last start when it is free
    remember_port: bool = True
    bootstrap: list[str] = Field(default_factory=list)
    dial_timeout_s: float = Field(default=5.0, gt=0)
    request_timeout_s: float = Field(default=30.0, gt=0)
    max_frame_size: int = Field(default=4 * 1024 * 1024, ge=1024, le=32 * 1024 * 1024)
    # bounds on a received frame's JSON, checked before it is parsed (docs/protocols.md §7)
    max_frame_depth: int = Field(default=DEFAULT_MAX_DEPTH, ge=1, le=MAX_DEPTH_CEILING)
    max_frame_members: int = Field(default=DEFAULT_MAX_MEMBERS, ge=1)
    max_frame_containers: int = Field(default=DEFAULT_MAX_CONTAINERS, ge=1)
    max_number_digits: int = Field(default=DEFAULT_MAX_NUMBER_DIGITS, ge=20, le=MAX_DIGITS_CEILING)
    shutdown_timeout_s: float = Field(default=5.0, gt=0)
    # what peers may hold of this node at once, and bans (docs/security.md "Floods")
    max_streams_per_peer: int = Field(default=128, ge=1)
    max_streams_total: int = Field(default=1024, ge=1)
    max_pending_bytes_per_peer: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_pending_bytes_total: int = Field(default=64 * 1024 * 1024, ge=1024)
    strikes_before_ban: int = Field(default=10, ge=1)
    strike_window_s: float = Field(default=60.0, gt=0)
    ban_s: float = Field(default=300.0, gt=0)
    flood_guard: bool = True  # false: nothing above is enforced (measurements only)

    _lists = field_validator("listen", "bootstrap", mode="before")(_split_list)

    @model_validator(mode="after")
    def _limits_agree(self) -> NetworkConfig:
        if self.max_frame_containers < self.max_frame_depth:  # as FrameLimits requires
            raise ValueError(
                f"max_frame_containers ({self.max_frame_containers}) must be at least "
                f"max_frame_depth ({self.max_frame_depth})"
            )
        if self.max_streams_total < self.max_streams_per_peer:
            raise ValueError(
                f"max_streams_total ({self.max_streams_total}) must be at least "
                f"max_streams_per_peer ({self.max_streams_per_peer})"
            )
        if self.max_pending_bytes_total < self.max_pending_bytes_per_peer:
            raise ValueError(
                f"max_pending_bytes_total ({self.max_pending_bytes_total}) must be at least "
                f"max_pending_bytes_per_peer ({self.max_pending_bytes_per_peer})"
            )
        return self

    def frame_limits(self) -> FrameLimits:
        """What every MessageStream of this node accepts (``limits=`` of MessageStream)."""
        return FrameLimits(
            max_frame_size=self.max_frame_size,
            max_depth=self.max_frame_depth,
            max_number_digits=self.max_number_digits,
            max_members=self.max_frame_members,
            max_containers=self.max_frame_containers,
        )

    def guard_limits(self) -> GuardLimits:
        """What the node's host lets peers hold at once, and when it bans one."""
        return GuardLimits(
            max_streams_per_peer=self.max_streams_per_peer,
            max_streams_total=self.max_streams_total,
            max_pending_bytes_per_peer=self.max_pending_bytes_per_peer,
            max_pending_bytes_total=self.max_pending_bytes_total,
            strikes_before_ban=self.strikes_before_ban,
            strike_window_s=self.strike_window_s,
            ban_s=self.ban_s,
            enabled=self.flood_guard,
        )


class DiscoveryConfig(_Section):
    refresh_interval_s: float = Field(default=5.0, gt=0)
    card_ttl_s: float = Field(default=30.0, gt=0)
    max_peers: int = Field(default=256, ge=1)
    # peer exchange: what one hello (or one refresh tick) may make this node do
    max_dials_per_exchange: int = Field(default=3, ge=0)
    max_peers_per_source: int = Field(default=16, ge=0)
    dial_backoff_s: float = Field(default=5.0, gt=0)
    dial_backoff_max_s: float = Field(default=300.0, gt=0)
    # keeping a place in the swarm: the peers remembered in HOME/peers.json (0: none), and
    # how long a lost member (or a remembered one, from the start) is redialled
    peer_store_size: int = Field(default=64, ge=0, le=1024)
    peer_store_max_age_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    redial_for_s: float = Field(default=600.0, ge=0)
    redial_backoff_max_s: float = Field(default=30.0, gt=0)


class HandoffConfig(_Section):
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    heartbeat_timeout_s: float = Field(default=10.0, gt=0)
    default_deadline_s: float = Field(default=3600.0, gt=0)
    max_hops: int = Field(default=4, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    # a step placed again after an interruption waits this long for the node it ran on to
    # reappear (its card) before another provider is chosen
    placement_wait_s: float = Field(default=3.0, ge=0)
    # who may hand steps to this node, and to whom this node hands its own
    allow: Literal["any"] | list[str] = "any"
    delegate_to: Literal["any"] | list[str] = "any"
    # what peers may ask of this node (per offering peer unless said otherwise)
    max_concurrent: int = Field(default=64, ge=1)  # all peers' steps accepted at once
    max_inflight_per_peer: int = Field(default=16, ge=1)
    max_offers_per_minute: int = Field(default=600, ge=1)
    max_deadline_s: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    max_args_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_result_bytes: int = Field(default=2 * 1024 * 1024, ge=1024)
    reserved_share: float = Field(default=0.25, ge=0, lt=1)  # of the slots, for own steps
    # the journal of handoffs peers made here
    retention_s: float = Field(default=24 * 3600.0, gt=0)
    max_stored_bytes_per_peer: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_journal_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024)
    ack_wait_s: float = Field(default=5.0, ge=0)
    # a handoff stream (1.2.0) idle this long between exchanges is closed
    session_idle_s: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("allow", "delegate_to", mode="before")
    @classmethod
    def _peer_lists(cls, value: Any) -> Any:
        return value if value == "any" else _split_list(value)


class RoutingConfig(_Section):
    """How long a step waits for a node that can run it instead of failing."""

    # no live node offers the step's tool (none ever did, or the only one is restarting), or
    # the node running it was lost mid-step: the step waits this long for a provider to
    # appear (or that node to come back) before it fails; a step's `wait_for_provider`
    # overrides it
    provider_wait_s: float = Field(default=300.0, ge=0)


class PlacementConfig(_Section):
    """How far this node trusts what peers say about themselves when placing steps."""

    exclude_s: float = Field(default=600.0, ge=0)
    unknown_peer_capacity: int = Field(default=1, ge=1)
    capacity_slack: int = Field(default=2, ge=0)
    # tool name -> nodes each of its steps runs on (outputs compared); deterministic tools only
    replicas: dict[str, int] = Field(default_factory=dict)

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, value: dict[str, int]) -> dict[str, int]:
        for tool, n in value.items():
            if not 1 <= n <= 8:
                raise ValueError(f"replicas for {tool!r} must be 1 to 8, not {n}")
        return value


class ControlConfig(_Section):
    allowed_clients: list[str] = Field(default_factory=list)
    allow_any_client: bool = False
    # a submit is answered after at most this long creating the workflow (else: PENDING)
    submit_wait_s: float = Field(default=5.0, ge=0, le=60)
    # an idle ``watch`` or ``result`` wait gets a heartbeat frame this often (js-libp2p
    # clients abort a stream idle for 120 s)
    heartbeat_s: float = Field(default=15.0, gt=0, le=60)
    # watches served at once, in all and per client; events kept per workflow; workflows
    # whose events are kept; events queued per watcher before it is cut off as lagged
    max_watches: int = Field(default=64, ge=1, le=10_000)
    max_watches_per_peer: int = Field(default=8, ge=1, le=10_000)
    watch_events_kept: int = Field(default=1000, ge=1, le=1_000_000)
    watch_workflows_kept: int = Field(default=256, ge=1, le=100_000)
    watch_queue: int = Field(default=256, ge=1, le=100_000)
    # a watcher that does not take a frame within this long is cut off
    watch_write_timeout_s: float = Field(default=10.0, gt=0, le=600)
    # the local control endpoint HOME/control.sock (node.control_socket): this user's CLI
    # without libp2p
    local_socket: bool = True

    _lists = field_validator("allowed_clients", mode="before")(_split_list)


class WorkflowFilesConfig(ParseLimits):
    """The bounds of parsing a workflow file sent to this node (:class:`ParseLimits`), and
    the worker processes that parse them (node.parse_pool)."""

    workers: int = Field(default=2, ge=1, le=16)
    worker_memory_mb: int = Field(default=256, ge=64, le=64 * 1024)

    def parse_limits(self) -> ParseLimits:
        """The parsing bounds alone."""
        return ParseLimits.model_validate(self.model_dump(include=set(ParseLimits.model_fields)))


class RayConfig(_Section):
    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    include_dashboard: bool = False
    log_to_driver: bool = False


class JournalConfig(_Section):
    synchronous: Literal["FULL", "NORMAL"] = "FULL"


class WorkflowsConfig(_Section):
    """What one workflow may do to the node: how often its resume may stop the node before
    it is quarantined, and what one of its steps may produce."""

    # a workflow resumed this many times in a row without completing a step, each time
    # ended by the node stopping (a crash, kill -9), is QUARANTINED, not resumed (0: never)
    max_resume_attempts: int = Field(default=3, ge=0)
    # a resume that has not finished starting after this long is QUARANTINED at once (0: off)
    resume_stall_s: float = Field(default=60.0, ge=0)
    # a step's output (as JSON) above this fails the step; checked in the Ray worker
    max_step_output_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # a step's error text and a traceback in it are cut to these, with a marker
    max_error_chars: int = Field(default=4096, ge=256)
    max_traceback_chars: int = Field(default=16384, ge=256)
    # folders of workflow files (*.yaml, *.yml) registered at start, by their id; null:
    # [HOME/workflows]; a relative path is relative to the home folder. Installed packages
    # add theirs through the entry-point group hivemesh.workflows (docs/workflows.md)
    dirs: list[Path] | None = None
    # files read from each folder (and each package) at most; the rest are reported
    max_files: int = Field(default=1000, ge=1, le=100_000)
    # a sub-workflow step runs another workflow; nested deeper than this, the step fails
    max_depth: int = Field(default=8, ge=1, le=64)

    def workflow_dirs(self, home: Path) -> list[Path]:
        """The workflows folders of a node whose home is ``home``."""
        if self.dirs is None:
            return [home / "workflows"]
        return [d if d.is_absolute() else home / d for d in (p.expanduser() for p in self.dirs)]

    def step_limits(self) -> StepLimits:
        """The limits the engine and the tool runner apply."""
        return StepLimits(
            max_output_bytes=self.max_step_output_bytes,
            max_error_chars=self.max_error_chars,
            max_traceback_chars=self.max_traceback_chars,
        )


class ToolPackagesConfig(_Section):
    """Tools installed per step (``tool: PACKAGE@VERSION`` or ``package: REQUIREMENT``):
    off by default, since such a step runs code this node fetches from a package index.
    Written in YAML as ``tools: {enable: all, install: true, ...}`` or as this section."""

    install: bool = False
    index_url: str | None = None  # pip's --index-url (None: pip's own default)
    no_index: bool = False  # only find_links (pip's --no-index)
    find_links: list[str] = Field(default_factory=list, max_length=16)  # folders or URLs
    install_timeout_s: float = Field(default=600.0, gt=0, le=3600)
    # disk the installed packages' environments may keep (each is a copy of the node's
    # virtualenv, ~0.5 GB with Ray); the least recently used go beyond it (a local Ray only)
    cache_gb: float = Field(default=10.0, gt=0, le=10_000)

    _lists = field_validator("find_links", mode="before")(_split_list)

    @field_validator("index_url", "find_links")
    @classmethod
    def _no_options(cls, value: Any) -> Any:
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and (item.startswith("-") or not item.strip()):
                raise ValueError(f"{item!r} is not a folder or URL")
        return value


class SwarmConfig(_Section):
    """Membership. A node is in a private swarm (the nodes that hold the same swarm key)
    unless ``open`` is true."""

    # null: HOME/swarm.key; a relative path is relative to the home folder
    key_file: Path | None = None
    open: bool = False
    # bound of the private-network handshake (nonces and the peer's first bytes)
    handshake_timeout_s: float = Field(default=1.5, gt=0, le=60)


def _is_quic(addr: str) -> bool:
    return any(part in ("quic", "quic-v1") for part in addr.split("/"))


class NodeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tools: str = "all"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    handoff: HandoffConfig = Field(default_factory=HandoffConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    journal: JournalConfig = Field(default_factory=JournalConfig)
    workflows: WorkflowsConfig = Field(default_factory=WorkflowsConfig)
    swarm: SwarmConfig = Field(default_factory=SwarmConfig)
    workflow_files: WorkflowFilesConfig = Field(default_factory=WorkflowFilesConfig)
    tool_packages: ToolPackagesConfig = Field(default_factory=ToolPackagesConfig)

    @model_validator(mode="before")
    @classmethod
    def _tools_section(cls, data: Any) -> Any:
        """``tools: {enable: GROUPS, install: ..., index_url: ...}`` is ``tools: GROUPS``
        plus the ``tool_packages`` section (its keys win over the section's)."""
        if not isinstance(data, Mapping) or not isinstance(data.get("tools"), Mapping):
            return data
        section = dict(data["tools"])
        enable = section.pop("enable", "all")
        packages = data.get("tool_packages")
        packages = dict(packages) if isinstance(packages, Mapping) else {}
        return {**data, "tools": enable, "tool_packages": {**packages, **section}}

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """``handoff.provider_wait_s`` (hivemesh 0.2) is now ``routing.provider_wait_s``: still
        accepted, with a warning; the new key wins if both are given."""
        if not isinstance(data, Mapping):
            return data
        handoff = data.get("handoff")
        if not isinstance(handoff, Mapping) or "provider_wait_s" not in handoff:
            return data
        log.warning("config: handoff.provider_wait_s is deprecated; use routing.provider_wait_s")
        handoff = dict(handoff)
        value = handoff.pop("provider_wait_s")
        routing = data.get("routing")
        routing = dict(routing) if isinstance(routing, Mapping) else {}
        routing.setdefault("provider_wait_s", value)
        return {**data, "handoff": handoff, "routing": routing}

    @model_validator(mode="after")
    def _membership(self) -> NodeConfig:
        if self.swarm.open and self.swarm.key_file is not None:
            raise ValueError(
                "swarm.open is true and swarm.key_file is set: an open swarm has no key; "
                "remove one of them"
            )
        quic = [a for a in self.network.listen if _is_quic(a)]
        if quic and not self.swarm.open:
            raise ValueError(
                f"network.listen: {quic[0]} is a QUIC address, which cannot be used in a "
                "private swarm (py-libp2p's QUIC ignores the swarm key); listen on /tcp"
            )
        return self

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, value: Any) -> Any:
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        return value


_DEFAULT_CONFIG_YAML = """\
# hivemesh node configuration. Flags and HIVEMESH_* environment variables override it.
swarm:
  key_file: null           # the swarm key (libp2p swarm.key format); null: HOME/swarm.key
  open: {open}              # true: no swarm key: anyone who can reach the node may connect
  handshake_timeout_s: 1.5 # a peer must complete the private-network handshake in this time
tools: all                 # tool groups this node offers: all, none, or e.g. "text,math"
tool_packages:             # tools installed per step (tool: PACKAGE@VERSION, package: ...);
  install: false           # true: run such steps here (pip installs code from an index!)
  index_url: null          # pip's --index-url (null: pip's default)
  no_index: false          # true: only find_links (pip's --no-index)
  find_links: []           # folders (or URLs) of wheels pip looks in
  install_timeout_s: 600   # an install that takes longer fails the step
  cache_gb: 10             # disk kept for installed packages' environments (a copy of the
                           # node's virtualenv each, ~0.5 GB); least recently used go first
log_level: INFO
network:
  listen: ["/ip4/127.0.0.1/tcp/0"]  # port 0: the port of the last start if free, else any
  remember_port: true      # false: port 0 is a new port at every start
  bootstrap: []            # multiaddrs with /p2p/<peer id>
  dial_timeout_s: 5
  request_timeout_s: 30
  max_frame_size: 4194304       # bytes (4 MiB) in a received frame; and in its JSON:
  max_frame_depth: 32           #   nesting of arrays and objects
  max_frame_members: 100000     #   elements of one array, members of one object
  max_frame_containers: 200000  #   arrays and objects in all
  max_number_digits: 64         #   digits in a row in a number
  # what peers may hold of this node at once (docs/security.md, "Floods"): over a peer's
  # limit its stream is refused or reset and it gets a strike, as for a garbage frame
  max_streams_per_peer: 128     # inbound streams open at once, per peer
  max_streams_total: 1024       #   and of all peers (a peer over its share makes room)
  max_pending_bytes_per_peer: 8388608   # bytes of frames received but not yet complete
  max_pending_bytes_total: 67108864     #   and of all peers
  strikes_before_ban: 10        # strikes within strike_window_s ban the peer:
  strike_window_s: 60           #   it is disconnected and its connections refused
  ban_s: 300                    #   for this long
  flood_guard: true             # false: none of the above is enforced
discovery:
  refresh_interval_s: 5
  card_ttl_s: 30
  max_dials_per_exchange: 3  # new peers one hello (or one refresh) may make this node dial
  max_peers_per_source: 16   # peers remembered on the word of any one other peer
  dial_backoff_s: 5          # wait after a failed dial of an address, doubled per failure,
  dial_backoff_max_s: 300    # up to this
  peer_store_size: 64        # peers remembered in HOME/peers.json and redialled at start (0: none)
  peer_store_max_age_s: 604800  # a remembered peer not seen for this long is dropped
  redial_for_s: 600          # a lost peer (or a remembered one) is redialled this long, with
  redial_backoff_max_s: 30   # at most this wait between dials of one of its addresses
handoff:
  allow: any               # or a list of peer ids allowed to delegate steps here
  delegate_to: any         # or a list of peer ids this node may hand its own steps to
  heartbeat_interval_s: 1
  heartbeat_timeout_s: 10
  placement_wait_s: 3      # a step placed again after an interruption waits this long for
                           # the node it ran on to reappear before another is chosen
  # what peers may ask of this node (each peer; beyond: a typed reject with a retry hint)
  max_concurrent: 64       # steps of all peers accepted at once
  max_inflight_per_peer: 16
  max_offers_per_minute: 600
  max_deadline_s: 3600
  max_args_bytes: 1048576
  max_result_bytes: 2097152
  reserved_share: 0.25     # share of this node's slots kept for its own workflows
  retention_s: 86400       # stored results of peers' steps are kept until acknowledged or this old
  max_stored_bytes_per_peer: 33554432
  max_journal_bytes: 536870912
  session_idle_s: 30       # a delegator's stream idle this long between two steps is closed
placement:
  exclude_s: 600           # a peer that broke the protocol or returned an invalid result
                           # gets no steps from this node for this long
  unknown_peer_capacity: 1 # steps at once for a peer that never ran one for this node
  capacity_slack: 2        # beyond the most steps at once a peer has completed for us
  replicas: {{}}           # e.g. {{"math.add": 3}}: run each step of these tools on 3 nodes
                           # and accept the output only if all agree (deterministic tools)
routing:
  provider_wait_s: 300     # no live node offers a step's tool, or its node was lost mid-step:
                           # the step waits this long for one (a step's wait_for_provider
                           # overrides it), then fails naming the tool
control:
  allowed_clients: []      # peer ids of client keys allowed besides this home's client.key
  allow_any_client: false
  submit_wait_s: 5         # a submit is answered within this long of creating the workflow;
                           # past it the answer is PENDING and the creation goes on
  heartbeat_s: 15          # an idle watch, or a result wait, gets a heartbeat this often
  max_watches: 64          # watches served at once
  max_watches_per_peer: 8  # by one client
  watch_events_kept: 1000  # events kept per workflow (older ones: reported as missed)
  watch_workflows_kept: 256  # workflows whose events are kept
  watch_queue: 256         # events queued for one watcher; beyond, it is cut off (lagged)
  watch_write_timeout_s: 10  # a watcher that takes no frame for this long is cut off
  local_socket: true       # also serve this user's CLI on HOME/control.sock (no libp2p)
workflow_files:            # bounds of reading a workflow file sent to this node (and the CLI's)
  max_bytes: 1048576       # the file
  max_depth: 64            # nesting of lists and mappings
  max_nodes: 100000        # YAML nodes, each alias counted as a copy of what it points at
  max_expanded_bytes: 4194304  # bytes of values, likewise
  max_value_bytes: 262144  # any one value
  max_steps: 1000
  timeout_s: 5             # wall-clock time of one parse
  workers: 2               # processes that parse (one file at a time each)
  worker_memory_mb: 256    # address space of each of them
ray:
  address: null            # null: start a local Ray; "auto" or host:port: join a cluster
  num_cpus: null
  include_dashboard: false
journal:
  synchronous: FULL        # FULL survives power loss; NORMAL is faster
workflows:
  max_resume_attempts: 3   # resumed this often in a row, each time ended by the node dying
                           # before a step completed: QUARANTINED, not resumed (0: never)
  resume_stall_s: 60       # a resume not started after this long: QUARANTINED (0: off)
  max_step_output_bytes: 8388608  # a step's output above this fails the step
  max_error_chars: 4096    # a step's error text is cut to this...
  max_traceback_chars: 16384  # ...and a traceback in it to this
  dirs: null               # folders of workflow files registered at start (null: [HOME/workflows];
                           # relative to the home); packages add theirs (hivemesh.workflows)
  max_files: 1000          # files read from each folder or package at most
  max_depth: 8             # sub-workflows nested deeper than this fail their step
"""


def default_config_yaml(*, open_swarm: bool = False) -> str:
    """The commented config file ``hivemesh init`` writes."""
    return _DEFAULT_CONFIG_YAML.format(open="true " if open_swarm else "false")


DEFAULT_CONFIG_YAML = default_config_yaml()


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _env_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    sections = {
        name
        for name, field in NodeConfig.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "HOME":
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        if len(path) == 1 and path[0] in NodeConfig.model_fields and path[0] not in sections:
            layer[path[0]] = _env_value(raw)
        elif len(path) == 2 and path[0] in sections:
            layer.setdefault(path[0], {})[path[1]] = _env_value(raw)
    return layer


def _env_value(raw: str) -> Any:
    try:
        value = json.loads(raw)
    except ValueError:
        return raw
    return value if isinstance(value, (list, dict, int, float, bool)) or value is None else raw


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: the config file is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: the config nests too deeply to be read") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{where}: invalid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping, not {type(data).__name__}")
    return data


def load_config(
    *,
    config_file: Path | None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> NodeConfig:
    """Build the config from its layers. ``flags`` uses the nested shape of the model."""
    layers: dict[str, Any] = {}
    source = "defaults"
    if config_file is not None and config_file.exists():
        layers = read_config_file(config_file)
        source = str(config_file)
    layers = _deep_merge(layers, _env_layer(os.environ if environ is None else environ))
    layers = _deep_merge(layers, dict(flags or {}))
    try:
        return NodeConfig.model_validate(layers)
    except pydantic.ValidationError as exc:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
        raise ConfigError(
            f"invalid configuration ({source}, environment, flags): " + "; ".join(problems)
        ) from None
