"""The node daemon: one trio event loop holding libp2p, the runner and the services.

Ray is started (or joined) in the main thread before the trio loop starts, and stopped
after it ends; inside the loop every Ray call goes through worker threads.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from functools import partial
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from typing import Any

import trio

from node import identity
from node.config import NodeConfig, RayConfig
from node.control import ControlService
from node.control_socket import ControlSocket, socket_path
from node.discovery import DiscoveryService
from node.errors import ConfigError, HomeError
from node.executor import SwarmExecutor
from node.handoff.admission import split_slots
from node.handoff.journal import AsyncHandoffJournal, HandoffJournal
from node.handoff.server import HandoffServer
from node.home import Home, SwarmMembership
from node.p2p import ListenSockets, P2PHost, quiet_libp2p_logging, valid_peer_id
from node.peerstore import PeerStore
from node.registry import PeerRegistry
from node.scheduler import Policy
from node.subworkflows import SubWorkflowRunner
from node.swarmkey import loosely_readable
from node.watch import hub_from
from node.workflow_registry import WorkflowRegistry, load_registry, workflow_files
from node.workflow_schedule import WorkflowScheduler, next_start_number
from node.workflow_service import WorkflowService
from protocols import control, discovery, handoff
from workflows.engine.storage import Storage
from workflows.tools import ToolRegistry

log = logging.getLogger("hivemesh.node")


def hivemesh_version() -> str:
    try:
        return dist_version("hivemesh")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def check_ray_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Raise ConfigError (one line) if the cluster at ``address`` (``HOST:PORT`` or
    ``ray://HOST:PORT``) does not accept a TCP connection within ``timeout_s``.

    ``ray.init`` retries an unreachable address for minutes, printing Ray's own warnings;
    a node that cannot join its cluster should say so at once. Other forms (``auto``,
    ``local``, none) are left to Ray."""
    if address is None or address in ("auto", "local"):
        return
    host, sep, port = address.split("://")[-1].rpartition(":")
    if not sep or not port.isdigit():
        return
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(
            f"cannot reach the Ray cluster at {address} ({reason.lower()}): start it, or "
            "fix ray.address (--ray-address)"
        ) from None


def start_ray(config: RayConfig, *, pip_cache_gb: float | None = None) -> tuple[int, str]:
    """Start a local Ray (bound to 127.0.0.1) or join ``config.address``.

    ``pip_cache_gb``: how much disk the runtime envs of package steps may keep (Ray deletes
    the least recently used beyond it; each is a copy of the node's virtualenv); only for a
    Ray started here. Returns the cluster's CPUs and its GCS address."""
    from workflows._loopback import is_loopback_address, keep_ray_on_loopback

    check_ray_address(config.address)

    if is_loopback_address(config.address):
        # a node's private Ray (or a cluster on loopback) stays on 127.0.0.1
        keep_ray_on_loopback()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if pip_cache_gb is not None and config.address is None:
        # (read by the runtime env agent that the local Ray starts)
        os.environ["RAY_RUNTIME_ENV_PIP_CACHE_SIZE_GB"] = f"{pip_cache_gb:g}"
    import ray

    kwargs: dict[str, Any] = {
        "include_dashboard": config.include_dashboard,
        "log_to_driver": config.log_to_driver,
        "logging_level": logging.WARNING,
        "namespace": "hivemesh",
    }
    if config.address is not None:
        kwargs["address"] = config.address
    else:
        kwargs["address"] = "local"
        kwargs["num_cpus"] = config.num_cpus or os.cpu_count() or 1
    ray.init(**kwargs)
    address = str(ray.get_runtime_context().gcs_address)
    if config.address is None and not address.startswith("127."):
        log.warning("the node's Ray listens on %s, not on loopback", address)
    return int(ray.cluster_resources().get("CPU", 1)), address


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


class Node:
    """All of a node's parts, wired together. ``run`` serves until cancelled."""

    def __init__(
        self,
        config: NodeConfig,
        home: Home,
        *,
        cpus: int,
        ray_address: str | None = None,
        swarm: SwarmMembership | None = None,
        listen_sockets: ListenSockets | None = None,
    ) -> None:
        from workflows.ray_tools import PackageInstall, RayToolRunner

        self.config = config
        # TCP listen sockets bound before Ray started (None: bound when the host starts)
        self.listen_sockets = listen_sockets
        # the Ray this node runs steps on: its own (started here) or a cluster it joined
        self.ray_info = control.RayInfo(
            address=ray_address, joined=config.ray.address is not None, cpus=cpus
        )
        self.home = home
        self.version = hivemesh_version()
        self.tools = ToolRegistry.from_entry_points(config.tools)
        key = home.load_node_key()
        owner_client = str(_peer_id(home.load_client_key(create=True)))
        self.journal = HandoffJournal(home.journal, synchronous=config.journal.synchronous)
        self.async_journal = AsyncHandoffJournal(self.journal)
        # the swarm: given, or from the config and the home (SwarmKeyError if the key is
        # missing or invalid)
        self.swarm = swarm if swarm is not None else home.membership(config.swarm)
        net = config.network
        self.host = P2PHost(
            key,
            swarm_key=self.swarm.key,
            handshake_timeout_s=config.swarm.handshake_timeout_s,
            dial_timeout_s=net.dial_timeout_s,
            shutdown_timeout_s=net.shutdown_timeout_s,
            guard=net.guard_limits(),
        )
        self.peer_id = self.host.peer_id
        disc, placement = config.discovery, config.placement
        self.registry = PeerRegistry(
            self.peer_id,
            max_peers=disc.max_peers,
            max_per_source=disc.max_peers_per_source,
            backoff_s=disc.dial_backoff_s,
            backoff_max_s=disc.dial_backoff_max_s,
            redial_for_s=disc.redial_for_s,
            redial_backoff_max_s=disc.redial_backoff_max_s,
            exclude_s=placement.exclude_s,
        )
        self.peer_store = PeerStore(
            home.peers_file,
            self_id=self.peer_id,
            size=disc.peer_store_size,
            max_age_s=disc.peer_store_max_age_s,
            valid_peer_id=valid_peer_id,
        )
        # Slots: tool steps that run at once on this node's Ray, half a CPU each (two per
        # CPU, as the node's card always said; smaller shares make Ray start and stop worker
        # processes all the time: a fan-out of quick steps ran 5-10x slower with a quarter
        # CPU each). Peers' steps get at most the slots not reserved for this node's own.
        self.local_capacity = max(2, cpus * 2)
        peer_slots, _reserved = split_slots(self.local_capacity, config.handoff.reserved_share)
        packages = config.tool_packages
        run_local = RayToolRunner(
            max_concurrent=self.local_capacity + peer_slots,
            num_cpus=cpus / self.local_capacity,
            limits=config.workflows.step_limits(),  # applied in the worker
            # tools installed per step: only where allowed (it runs code from an index)
            install=PackageInstall(
                index_url=packages.index_url,
                no_index=packages.no_index,
                find_links=tuple(packages.find_links),
                timeout_s=packages.install_timeout_s,
            )
            if packages.install
            else None,
            tools=self.tools,
        )
        self.run_local = run_local
        self.handoff = HandoffServer(
            self.tools,
            run_local,
            self.async_journal,
            net,
            config.handoff,
            peer_id=self.peer_id,
            sign=partial(identity.sign, key),
            slots=peer_slots,
            packages=run_local if packages.install else None,
        )
        # every step's progress, for ``watch`` and the waiting reasons of ``status``
        self.progress = hub_from(config.control)
        self.executor = SwarmExecutor(
            host=self.host,
            registry=self.registry,
            tools=self.tools,
            run_local=run_local,
            local_capacity=self.local_capacity,
            network=net,
            config=config.handoff,
            journal=self.async_journal,
            policy=Policy(
                unknown_capacity=placement.unknown_peer_capacity,
                capacity_slack=placement.capacity_slack,
                max_per_peer=config.handoff.max_inflight_per_peer,
            ),
            replicas=placement.replicas,
            progress=self.progress,
            routing=config.routing,
            packages=run_local if packages.install else None,
        )
        self.storage = Storage(home.path, synchronous=config.journal.synchronous)
        self.workflows = WorkflowService(
            self.storage, self.executor, config.workflows, progress=self.progress
        )
        # the workflows of the node's workflows folders and packages, registered at start
        self.workflow_registry = WorkflowRegistry()
        self.scheduler: WorkflowScheduler | None = None
        self.discovery = DiscoveryService(
            self.host,
            self.registry,
            self._card,
            net,
            config.discovery,
            key=key,
            store=self.peer_store,
        )
        self.control = ControlService(
            host=self.host,
            workflows=self.workflows,
            registry=self.registry,
            tools=self.tools,
            version=self.version,
            owner_client=owner_client,
            network=net,
            config=config.control,
            handoffs=self.handoff,
            journal=self.async_journal,
            ray_info=self.ray_info,
            workflow_files=config.workflow_files,
            progress=self.progress,
            workflow_registry=self.workflow_registry,
        )
        self.sub_workflows = SubWorkflowRunner(
            self.workflow_registry,
            self.workflows,
            self._start_workflow,
            node_id=self.peer_id,
            max_depth=config.workflows.max_depth,
        )
        self.executor.sub_workflows = self.sub_workflows.run
        # the local control endpoint: the same handler, for this user's processes
        self.control_socket = self._control_socket(owner_client)
        # Handlers first, before anything dials (LIBP2P_NOTES pitfall 7).
        self.host.set_handler(
            discovery.PROTOCOL_ID, self.discovery.handle, timeout_s=net.request_timeout_s * 2
        )
        for legacy in discovery.LEGACY_PROTOCOL_IDS:
            self.host.set_handler(
                legacy,
                self.discovery.legacy_handler(legacy),
                timeout_s=net.request_timeout_s * 2,
            )
        self.host.set_handler(handoff.PROTOCOL_ID, self.handoff.handle)
        # (1.1.0: one exchange per stream; 1.0.0: its offers lack 1.1.0's members too)
        old_handoffs = (self.handoff.handle_1_1, self.handoff.handle_1_0)
        for legacy, handler in zip(handoff.LEGACY_PROTOCOL_IDS, old_handoffs, strict=True):
            self.host.set_handler(legacy, handler)
        self.host.set_handler(control.PROTOCOL_ID, self.control.handle)
        for legacy in control.LEGACY_PROTOCOL_IDS:
            self.host.set_handler(legacy, self.control.legacy_handler(legacy))

    def _control_socket(self, owner_client: str) -> ControlSocket | None:
        if not self.config.control.local_socket:
            return None
        path = socket_path(self.home.path)
        if path is None:
            log.warning(
                "no local control socket: the home path %s is too long for a Unix socket; "
                "the CLI uses libp2p",
                self.home.path,
            )
            return None
        net = self.config.network
        guarded = net.flood_guard
        return ControlSocket(
            path,
            self.control.handle,
            self.control.refuse,
            client_peer=owner_client,  # what the home's CLI is on libp2p too
            max_connections=net.max_streams_per_peer if guarded else None,
            max_pending_bytes=net.max_pending_bytes_per_peer if guarded else None,
            write_timeout_s=net.request_timeout_s,
        )

    async def _start_workflow(
        self, spec: Any, inputs: dict[str, Any], workflow_id: str, metadata: dict[str, Any]
    ) -> None:
        """Create a workflow through the control service's idempotent path and wait until
        it is created (a sub-workflow, whose step then waits for it)."""
        await self.control.start(spec, inputs, workflow_id, metadata)
        await self.control.wait_created(workflow_id)

    async def _register_workflows(self) -> None:
        """Find, parse and register the workflow files (node.workflow_registry)."""
        cfg = self.config.workflows
        dirs = cfg.workflow_dirs(self.home.path)
        files, problems = await trio.to_thread.run_sync(workflow_files, dirs, cfg.max_files)
        parser = self.control.parser
        await load_registry(
            files,
            parser.parse,
            parser.limits,
            problems,
            registry=self.workflow_registry,
            concurrency=parser.workers,
        )
        reg = self.workflow_registry
        if files or reg.problems:
            log.info(
                "workflows registered: %d (%d files skipped)",
                len(reg.workflows),
                len(reg.problems) + reg.problems_dropped,
            )

    def card(self) -> discovery.NodeCard:
        """This node's card as peers get it (with its signed address record)."""
        return self.discovery.card()

    def _card(self) -> discovery.NodeCard:
        return discovery.NodeCard(
            peer_id=self.peer_id,
            addrs=self.host.addrs(),
            version=self.version,
            tools=[discovery.ToolCard(**t.spec()) for t in self.tools if t.remote_callable],
            load=discovery.LoadInfo(
                running=self.handoff.running + self.executor.local_running,
                capacity=self.local_capacity,
            ),
            ttl_s=self.config.discovery.card_ttl_s,
            installs=discovery.InstallInfo(
                allowed=self.config.tool_packages.install,
                packages=self.run_local.installed[-discovery.MAX_PACKAGES :],
            ),
        )

    async def run(
        self,
        *,
        on_ready: Callable[[dict[str, Any]], None] | None = None,
        task_status: Any = trio.TASK_STATUS_IGNORED,
    ) -> None:
        net = self.config.network
        sockets = self.listen_sockets
        own_sockets = None
        if sockets is None:  # ListenError: a port in use
            sockets = own_sockets = self.home.bind_listen(net.listen, remember=net.remember_port)
        for note in sockets.notes:
            log.warning("%s", note)
        try:
            async with (
                self.host.run(net.listen, sockets=sockets),
                trio.open_nursery() as n,
            ):
                await n.start(self.handoff.serve)
                await n.start(self.executor.serve)
                await n.start(self.workflows.serve)
                await n.start(self.control.serve)  # (its parse workers, and submits' creations)
                await self._register_workflows()
                await n.start(self.discovery.serve)
                local = None
                if self.control_socket is not None:
                    local = await n.start(self.control_socket.serve)
                self.executor.joined.set()  # bootstrap done: resumed steps may place now
                start_number = await trio.to_thread.run_sync(next_start_number, self.home.path)
                self.scheduler = WorkflowScheduler(
                    self.workflow_registry,
                    self.control.start,  # (within control.submit_wait_s; creation goes on)
                    self.workflows.known_ids,
                    start_number=start_number,
                )
                await n.start(self.scheduler.serve)  # (at_start runs and missed slots first)
                info: dict[str, Any] = {
                    "peer_id": self.peer_id,
                    "addrs": self.host.addrs(),
                    "tools": self.tools.names(),
                    "pid": os.getpid(),
                    "version": self.version,
                    "ray": self.ray_info.model_dump(),
                    # the CLI reaches this node with the same key (null: an open swarm)
                    "swarm_key_file": (
                        str(self.swarm.key_file) if self.swarm.key_file is not None else None
                    ),
                    "swarm": self.swarm.describe(),
                    # the local control endpoint (null: none), and the protocol it speaks
                    "control_socket": str(local) if local is not None else None,
                    "control_protocol": control.PROTOCOL_ID,
                }
                self._log_membership()
                if net.remember_port:
                    self._remember_ports(sockets.ports)
                self.home.write_runtime(info)
                log.info("node %s ready on %s", self.peer_id, ", ".join(info["addrs"]))
                if on_ready is not None:
                    on_ready(info)
                task_status.started(info)
        finally:
            if own_sockets is not None:
                own_sockets.close()
            self.home.clear_runtime(os.getpid())
            self.journal.close()
            self.storage.close()

    def _remember_ports(self, ports: dict[str, int]) -> None:
        try:
            self.home.remember_ports(ports)
        except HomeError as exc:
            log.warning("%s: the next start may listen on other ports", exc)

    def _log_membership(self) -> None:
        if self.swarm.key is None:
            log.warning(
                "this node is in an OPEN swarm (swarm.open: true): anyone who can reach its "
                "addresses may connect; run 'hivemesh init' on a fresh home for a private one"
            )
            return
        log.info("swarm: %s", self.swarm.describe())
        if self.swarm.key_file is not None and loosely_readable(self.swarm.key_file):
            log.warning(
                "swarm key %s is readable by other users: run 'chmod 600 %s'",
                self.swarm.key_file,
                self.swarm.key_file,
            )


async def _serve_until_signal(node: Node, on_ready: Callable[[dict[str, Any]], None]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: node.run(on_ready=on_ready))
            async for signum in signals:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def run_daemon(
    config: NodeConfig,
    home: Home,
    swarm: SwarmMembership | None = None,
    listen_sockets: ListenSockets | None = None,
) -> None:
    """Foreground daemon for ``hivemesh node start``: stdout gets the ready lines.

    The caller holds the home's lock (:meth:`Home.claim_for_node`). The TCP listen sockets
    are bound before Ray starts (by the caller, or here), so a port in use costs
    milliseconds, not a Ray start; the caller closes the sockets it gave."""
    if listen_sockets is not None:
        _run_daemon(config, home, swarm, listen_sockets)
        return
    net = config.network
    with home.bind_listen(net.listen, remember=net.remember_port) as sockets:  # ListenError
        _run_daemon(config, home, swarm, sockets)


def _run_daemon(
    config: NodeConfig,
    home: Home,
    swarm: SwarmMembership | None,
    listen_sockets: ListenSockets,
) -> None:
    logging.basicConfig(
        level=config.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # py-libp2p logs expected events (a CLI client without our protocols, a peer going
    # away) as multi-line errors; hivemesh logs what matters itself.
    quiet_libp2p_logging(logging.DEBUG if config.log_level == "DEBUG" else logging.CRITICAL)
    cpus, ray_address = start_ray(config.ray, pip_cache_gb=config.tool_packages.cache_gb)
    try:
        node = Node(
            config,
            home,
            cpus=cpus,
            ray_address=ray_address,
            swarm=swarm,
            listen_sockets=listen_sockets,
        )

        def ready(info: dict[str, Any]) -> None:
            lines = [
                f"hivemesh node ready (pid {info['pid']}, home {home.path})",
                f"peer id: {info['peer_id']}",
            ]
            lines += [f"addr:    {a}" for a in info["addrs"]]
            lines.append(f"tools:   {', '.join(info['tools']) or '(none)'}")
            lines.append(f"swarm:   {info['swarm']}")
            ray_info = info["ray"]
            how = "joined cluster" if ray_info["joined"] else "own Ray"
            lines.append(f"ray:     {how} at {ray_info['address']}, {ray_info['cpus']} CPUs")
            print("\n".join(lines), flush=True)

        trio.run(_serve_until_signal, node, ready)
    finally:
        stop_ray()
        log.info("node stopped")


def _peer_id(key: Any) -> str:
    from node.home import peer_id_of

    return peer_id_of(key)
