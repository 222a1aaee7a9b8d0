"""The node's step executor: place each step locally (Ray) or on a peer (handoff).

A delegated step is journaled on this side too (the handoff journal's ``out`` records): the
attempt (epoch) offered to each peer, and the result with the receipt this node checked. A
step placed again on the peer it ran on re-attaches with the same epoch if that attempt had
not finished; after a finished attempt (failed, lost, canceled, rejected) it offers the next
epoch, which supersedes the old one there. A result recorded here but not yet committed by the
engine (this node stopped in between) is returned from the journal without asking anyone.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import trio

from node.config import HandoffConfig, NetworkConfig, RoutingConfig
from node.errors import NodeError, NodeUnreachableError, PlacementError
from node.handoff.delegator import (
    Abandon,
    HandoffOutcome,
    abandon_on_cancel,
    current_abandon,
    delegate,
)
from node.handoff.errors import (
    HandoffCanceledError,
    HandoffError,
    HandoffFailedError,
    HandoffGaveUpError,
    HandoffLostError,
    HandoffProtocolError,
    HandoffRejectedError,
    InvalidReceiptError,
    InvalidResultError,
)
from node.handoff.journal import AsyncHandoffJournal
from node.handoff.sessions import HandoffStreams
from node.outputs import check_outputs
from node.p2p import P2PHost
from node.progress import ProgressHub
from node.registry import PeerRegistry, PeerState
from node.scheduler import Candidate, Decision, Evidence, Policy, explanation, place, short
from node.slot_wait import SlotWaiters, Ticket
from protocols import handoff, logsafe
from protocols.canonical import canonical_json
from protocols.discovery import ToolCard
from workflows.errors import ToolError, error_text
from workflows.tool_steps import (
    STEP_TIMEOUT,
    PlacementCallback,
    StepExecutionError,
    ToolCall,
    ToolOutcome,
)
from workflows.tools import ToolRegistry

if TYPE_CHECKING:  # (it imports Ray: the node imports it where it runs steps)
    from workflows.ray_tools import PackageRun

log = logging.getLogger(__name__)

# rejections that mean "busy now": the step waits and asks again instead of failing
BACKPRESSURE = ("quota_exceeded", "overloaded")
MAX_BACKOFF_S = 30.0

# how often a step with no provider looks again at the registry (a new peer's card)
PROVIDER_POLL_S = 0.1

# (tool, version, args, idempotency key[, resources=..., parameters=...]) -> outputs; the
# keywords only when the step has them (its placement.resources, its parameters)
LocalRunner = Callable[..., Awaitable[dict[str, Any]]]
# (step, why it waits) when a step starts waiting for a provider; (step, None) when it stops
WaitingCallback = Callable[[ToolCall, str | None], None]
# runs a sub-workflow step (``workflow: ID``) on this node (node.subworkflows)
SubWorkflowRun = Callable[[ToolCall, PlacementCallback], Awaitable[ToolOutcome]]


class PackageRunner(Protocol):
    """Runs package steps on this node (``workflows.ray_tools.RayToolRunner`` with an
    ``install`` config): given only when the node allows installs (``tools.install``)."""

    @property
    def installed(self) -> list[str]:
        """Requirements installed here already (placement prefers nodes that have them)."""
        ...

    async def run_package(
        self,
        requirement: str,
        tool: str | None,
        version: str | None,
        args: dict[str, Any],
        idempotency_key: str | None = None,
        *,
        parameters: Mapping[str, str] | None = None,
    ) -> PackageRun: ...


INSTALL_HINT = "tools.install: true (or tool_packages.install) in a node's config"


class SwarmExecutor:
    """Implements :class:`workflows.tool_steps.StepExecutor` for the node."""

    def __init__(
        self,
        *,
        host: P2PHost,
        registry: PeerRegistry,
        tools: ToolRegistry,
        run_local: LocalRunner,
        local_capacity: int,
        network: NetworkConfig,
        config: HandoffConfig,
        journal: AsyncHandoffJournal,
        policy: Policy | None = None,
        replicas: Mapping[str, int] | None = None,
        progress: ProgressHub | None = None,
        routing: RoutingConfig | None = None,
        on_waiting: WaitingCallback | None = None,
        packages: PackageRunner | None = None,
    ) -> None:
        self.host = host
        self.registry = registry
        self.tools = tools
        self.run_local = run_local
        self.local_capacity = local_capacity
        self.network = network
        self.config = config
        self.journal = journal
        self.policy = policy or Policy()
        self.replicas = dict(replicas or {})  # tool -> nodes each of its steps runs on
        self.local_running = 0
        self._nursery: trio.Nursery | None = None
        self._gates: dict[str, trio.Semaphore] = {}  # per peer: steps in flight there
        # steps waiting for a free slot at a provider of their tool (every one is full)
        self.slots = SlotWaiters(poll_s=PROVIDER_POLL_S)
        self.progress = progress  # where steps' progress is reported (node.progress)
        self.routing = routing or RoutingConfig()
        self.on_waiting = on_waiting
        # set once the node has joined the swarm (bootstrap peers dialled, their cards in):
        # a step resumed at start waits for it before it looks for the node it ran on
        self.joined = trio.Event()
        # runs package steps here; None: this node does not install packages
        self.packages = packages
        # set by the node: how a sub-workflow step runs (None: such a step fails)
        self.sub_workflows: SubWorkflowRun | None = None
        # handoff streams kept between steps (1.2.0), and the version each peer speaks
        self.streams = HandoffStreams()
        host.on_connection_change(self._connection_changed)

    def _connection_changed(self, peer: str, up: bool) -> None:
        if not up:
            self.streams.forget(peer)

    def _note(
        self,
        request: ToolCall,
        kind: str,
        *,
        node: str | None = None,
        reason: str | None = None,
        error: str | None = None,
    ) -> None:
        """Report a step's progress (a ``watch`` shows it; ``status`` its waiting reason)."""
        if self.progress is not None:
            self.progress.step(
                request.workflow_id,
                request.step,
                kind,
                tool=request.tool,
                node=node,
                reason=reason,
                error=error,
            )

    def provider_wait_s(self, request: ToolCall) -> float:
        """How long ``request`` waits for a provider: its own ``wait_for_provider``, else
        ``routing.provider_wait_s``."""
        if request.provider_wait_s is not None:
            return request.provider_wait_s
        return self.routing.provider_wait_s

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Owns background work: recording delegated results, then acknowledging them, and
        closing handoff streams left idle."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.streams.run)
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self.streams.aclose()

    def may_delegate_to(self, peer_id: str) -> bool:
        allowed = self.config.delegate_to
        return allowed == "any" or peer_id in allowed

    def candidates(
        self, tool: str, version: str | None, peers: Collection[str] = (), mode: str = "auto"
    ) -> list[Candidate]:
        """Nodes that may run ``tool``: this one and peers with fresh cards offering it, within
        ``handoff.delegate_to`` and, if given, ``peers`` (a step's ``placement.peers``);
        ``mode`` (a step's ``placement``) ``local`` keeps only this node, ``remote`` only
        peers."""
        out = []
        here = mode != "remote" and (not peers or self.host.peer_id in peers)
        if here and self.tools.has(tool, version):
            t = self.tools.get(tool, version)
            out.append(
                Candidate(
                    self.host.peer_id, True, t.version, self.local_running, self.local_capacity
                )
            )
        if mode == "local":
            return out
        now = self.registry.now()
        for state, card in self.registry.providers(tool, version):
            if self._may_hand_to(state.peer_id, peers):
                out.append(self._peer_candidate(state, card.version, tool, now))
        return out

    def _may_hand_to(self, peer_id: str, peers: Collection[str]) -> bool:
        """Within ``handoff.delegate_to`` and, if given, a step's ``placement.peers``."""
        return self.may_delegate_to(peer_id) and (not peers or peer_id in peers)

    def _peer_candidate(
        self, state: PeerState, version: str, tool: str, now: float, *, warm: bool = False
    ) -> Candidate:
        """A peer as a candidate for a step of ``tool``: its card's load (the claims; place()
        caps them by the evidence), what it did for this node, its exclusion if any."""
        load = state.card.load if state.card else None
        exclusion = self.registry.exclusion(state.peer_id)
        return Candidate(
            state.peer_id,
            False,
            version,
            running=load.running if load else 0,
            capacity=load.capacity if load else 1,
            rtt_ms=state.rtt_ms,
            recent_failures=self.registry.recent_failures(state.peer_id),
            evidence=Evidence(
                done=state.done,
                failed=state.failed,
                outstanding=state.outstanding,
                sustained=state.sustained,
                run_ms=state.run_ms.get(tool),
            ),
            excluded=(
                f"{exclusion.reason} (for {exclusion.until - now:.0f} s more)"
                if exclusion is not None
                else None
            ),
            warm=warm,
        )

    def _candidates_for(self, request: ToolCall) -> list[Candidate]:
        """The candidates of a step: for a package step the nodes that install packages
        (warm: the requirement is installed there already); else those offering its tool."""
        if request.package is None:
            return self.candidates(request.tool, request.version, request.peers, request.mode)
        peers, package = request.peers, request.package
        out: list[Candidate] = []
        here = request.mode != "remote" and (not peers or self.host.peer_id in peers)
        if self.packages is not None and here:
            out.append(
                Candidate(
                    self.host.peer_id,
                    True,
                    package,
                    self.local_running,
                    self.local_capacity,
                    warm=package in self.packages.installed,
                )
            )
        if request.mode == "local":
            return out
        now = self.registry.now()
        for state in self.registry.installers():
            if self._may_hand_to(state.peer_id, peers):
                assert state.card is not None and state.card.installs is not None
                warm = package in state.card.installs.packages
                out.append(self._peer_candidate(state, package, request.tool, now, warm=warm))
        return out

    async def execute(self, request: ToolCall, placed: PlacementCallback) -> ToolOutcome:
        """Run the step (see :meth:`_execute`), within its ``timeout_s`` if it has one: past
        it, the step is stopped where it runs (a local Ray task is cancelled, a peer is sent
        a handoff ``cancel``) and fails with error type ``StepTimeout``."""
        if request.timeout_s is None:
            return await self._execute(request, placed)
        timeout = request.timeout_s
        deadline = trio.current_time() + timeout
        # a delegated step cancelled by its deadline is abandoned (the peer is sent a
        # ``cancel``), as when its workflow is canceled; cancelled by the node shutting down,
        # it is not (the workflow re-attaches after the restart)
        abandon = _Deadline(current_abandon(), deadline, f"its timeout of {timeout:g}s passed")
        with trio.CancelScope(deadline=deadline) as scope, abandon_on_cancel(abandon):
            return await self._execute(request, placed)
        assert scope.cancelled_caught
        self._note(request, "failed", reason=f"stopped after its timeout of {timeout:g}s")
        error = StepExecutionError(
            f"step stopped after its timeout of {timeout:g}s", error_type=STEP_TIMEOUT
        )
        error.repeatable = self.repeatable(request)
        raise error

    def repeatable(self, request: ToolCall) -> bool:
        """Whether running the step's tool again is safe after an attempt stopped mid-way
        (its effect may or may not have happened): the tool is declared idempotent or
        deterministic, here or in a provider's card. Package and sub-workflow steps: their
        tool is not known here (a sub-workflow's steps are journaled: it is)."""
        if request.workflow is not None:
            return True
        if self.tools.has(request.tool, request.version):
            tool = self.tools.get(request.tool, request.version)
            return bool(tool.idempotent or tool.deterministic)
        cards = [card for _, card in self.registry.providers(request.tool, request.version)]
        return bool(cards) and all(card.idempotent or card.deterministic for card in cards)

    async def _execute(self, request: ToolCall, placed: PlacementCallback) -> ToolOutcome:
        if request.workflow is not None:
            return await self._run_sub_workflow(request, placed)
        if request.mode == "local" and request.package is not None and self.packages is None:
            raise StepExecutionError(
                f"step has placement 'local' and needs package {request.package!r}, but this "
                f"node does not install packages: set {INSTALL_HINT}, or use placement auto"
            )
        if (
            request.mode == "local"
            and request.package is None
            and not self.tools.has(request.tool, request.version)
        ):
            raise StepExecutionError(
                f"step has placement 'local', but this node does not offer tool "
                f"{request.tool!r}{'@' + request.version if request.version else ''}: enable "
                "it here (config 'tools') or use placement auto"
            )
        replicas = max(request.replicas, self.replicas.get(request.tool, 1))
        if replicas > 1:
            return await self._execute_replicated(request, placed, replicas)
        # nodes not to ask again for this step: they refused it or cannot be trusted with it
        excluded: list[str] = []
        last_error: str | None = None
        decision: Decision | None = None
        failures = 0
        now = trio.current_time()
        # a busy peer is backpressure, not a failure: wait and ask again, as long as the step
        # may take
        patience = now + self.config.default_deadline_s
        # a peer lost mid-step (killed, restarting, unreachable) may come back, and its
        # journal has the step: the step waits for it (or another provider) this long
        trouble_since: float | None = None
        losses = 0
        prefer = request.previous_node
        moved: tuple[str, str] | None = None  # ("lost" | "failed", node) before this placement
        provider_wait_s = self.provider_wait_s(request)
        while failures < self.config.max_attempts:
            wait_until = None if trouble_since is None else trouble_since + provider_wait_s
            if trouble_since is not None and prefer is not None:
                # after a loss: back to that peer only while it is the one that answers
                alive = self.host.is_connected(prefer)
                others = any(c.node != prefer for c in self._candidates_for(request))
                prefer = prefer if alive or not others else None
            try:
                decision = await self._place(request, excluded, prefer, wait_until)
            except PlacementError as exc:
                message = _placement_problem(exc, request)
                message = message if last_error is None else f"{message}; last error: {last_error}"
                raise StepExecutionError(
                    message,
                    node=decision.node if decision else None,
                    reason=decision.reason if decision else None,
                ) from None
            try:  # the decision holds a slot there: released when the step ends there
                await placed(decision.node, decision.reason, explanation(decision))
                if moved is not None:
                    again = moved[0] == "lost" and moved[1] == decision.node
                    self._note(
                        request,
                        "reattached" if again else "failed_over",
                        node=decision.node,
                        reason=(
                            f"asking {short(decision.node)} again for the same attempt"
                            if again
                            else f"after {moved[0]} node {short(moved[1])}: {last_error}"
                        ),
                    )
                    moved = None
            except BaseException:
                self._release(decision)
                raise
            if decision.local:
                return await self._run_here(request, decision)
            try:
                return await self._run_remote(request, decision)
            except HandoffFailedError as exc:
                # the tool ran and failed, or was canceled (HandoffCanceledError: a re-attach
                # to a handoff this node canceled): retrying elsewhere would not help
                raise StepExecutionError(
                    exc.message, node=decision.node, reason=decision.reason
                ) from None
            except HandoffRejectedError as exc:
                last_error = exc.message
                if exc.code in BACKPRESSURE and trio.current_time() < patience:
                    wait = min(max(exc.retry_after_s or 1.0, 0.05), MAX_BACKOFF_S)
                    wait *= 1 + random.random() / 2  # spread the retries of a fan-out
                    self._note(
                        request,
                        "waiting",
                        node=decision.node,
                        reason=f"waiting: all providers of {request.tool} busy "
                        f"({short(decision.node)}: {_one_line(exc.message, 120)})",
                    )
                    log.info(
                        "step %s: %s; asking again in %.1fs",
                        logsafe(request.idempotency_key),
                        logsafe(exc),
                        wait,
                    )
                    await trio.sleep(wait)
                    self._note(request, "retried", reason=f"asking again after {wait:.1f}s")
                    continue
                excluded.append(decision.node)
                moved = ("failed", decision.node)
                failures += 1
                log.info(
                    "step %s: %s; trying another node",
                    logsafe(request.idempotency_key),
                    logsafe(exc),
                )
            except (HandoffProtocolError, InvalidResultError, InvalidReceiptError) as exc:
                excluded.append(decision.node)
                moved = ("failed", decision.node)
                failures += 1
                last_error = str(exc)
                self._count_failure(request, decision.node, exc)
            except (HandoffLostError, NodeUnreachableError) as exc:
                # outcome unknown: the peer may still run the step, or come back with it in
                # its journal; ask it again (the same attempt: a re-attach) once it answers,
                # or another provider meanwhile
                last_error = str(exc)
                self._count_failure(request, decision.node, exc)
                now = trio.current_time()
                trouble_since = now if trouble_since is None else trouble_since
                if now - trouble_since >= provider_wait_s:
                    raise StepExecutionError(
                        f"no node could run tool {request.tool!r} for "
                        f"{provider_wait_s:g}s; last error: {last_error}",
                        node=decision.node,
                        reason=decision.reason,
                    ) from None
                # ask it first once it answers again (re-attach); meanwhile, if other nodes
                # offer the tool, placement may choose them
                prefer = decision.node
                moved = ("lost", decision.node)
                losses += 1
                self._note(
                    request,
                    "waiting",
                    node=decision.node,
                    reason=f"waiting: lost {short(decision.node)} mid-step; waiting for it to "
                    f"come back (or another provider of {request.tool}), up to "
                    f"{provider_wait_s:g}s",
                )
                await trio.sleep(min(0.25 * 2**losses, 10.0) * (1 + random.random() / 2))
                continue
            except (HandoffError, NodeError) as exc:
                excluded.append(decision.node)
                moved = ("failed", decision.node)
                failures += 1
                last_error = str(exc)
                self._count_failure(request, decision.node, exc)
            else:
                trouble_since = None
        raise StepExecutionError(
            f"tool {request.tool!r} failed on {len(excluded)} node(s); last error: {last_error}",
            node=decision.node if decision else None,
            reason=decision.reason if decision else None,
        )

    def _count_failure(self, request: ToolCall, peer: str, exc: Exception) -> None:
        """A peer did not produce a result: a recent failure; excluded for a while if it broke
        the protocol or vouched for an invalid result."""
        self.registry.record_failure(peer)
        if isinstance(exc, (HandoffProtocolError, InvalidResultError, InvalidReceiptError)):
            self.registry.exclude(peer, _one_line(exc.message))
            log.warning(
                "step %s: %s; peer excluded for %g s; trying another node",
                logsafe(request.idempotency_key),
                logsafe(exc),
                self.registry.exclude_s,
            )
        else:
            log.warning(
                "step %s: %s; trying another node", logsafe(request.idempotency_key), logsafe(exc)
            )

    async def _execute_replicated(
        self, request: ToolCall, placed: PlacementCallback, replicas: int
    ) -> ToolOutcome:
        """Run the step on ``replicas`` distinct nodes at once and accept its output only if
        they all return the same (canonical JSON). Nodes that fail to answer are replaced, up to
        ``handoff.max_attempts`` rounds; a disagreement fails the step, naming every node and
        its output, and excludes the nodes a strict majority outvoted."""
        tool = request.tool
        tried: list[str] = []
        results: dict[str, dict[str, Any]] = {}
        order: list[str] = []  # placement order of the nodes that answered
        problems: list[str] = []
        first: Decision | None = None
        failed: list[StepExecutionError] = []

        async def run_one(decision: Decision) -> None:
            try:
                if decision.local:
                    outcome = await self._run_here(request, decision)
                else:
                    outcome = await self._run_remote(request, decision)
            except HandoffFailedError as exc:  # the tool ran and failed there
                failed.append(
                    StepExecutionError(exc.message, node=decision.node, reason=decision.reason)
                )
            except StepExecutionError as exc:  # the tool failed here
                failed.append(exc)
            except (HandoffError, NodeError) as exc:
                problems.append(f"{short(decision.node)}: {_one_line(str(exc))}")
                self._count_failure(request, decision.node, exc)
            else:
                results[decision.node] = outcome.outputs
                order.append(decision.node)

        for _round in range(self.config.max_attempts):
            chosen: list[Decision] = []  # each holds a slot until it runs (or is dropped)
            try:
                while len(results) + len(chosen) < replicas:
                    try:
                        decision = await self._place(request, tried)
                    except PlacementError:
                        break
                    tried.append(decision.node)
                    chosen.append(decision)
                    if not self._deterministic(request, decision):
                        where = "this node" if decision.local else f"peer {short(decision.node)}"
                        raise StepExecutionError(
                            f"step {request.step!r} asks for {replicas} replicas, but tool "
                            f"{tool!r} on {where} is not declared deterministic (only "
                            "deterministic tools can be replicated and compared)",
                            node=decision.node,
                            reason=decision.reason,
                        )
                if not chosen:
                    break
                if first is None:
                    first = chosen[0]
                    names = ", ".join(short(d.node) for d in chosen)
                    await placed(
                        first.node,
                        f"replicated on {len(chosen)} nodes ({names}); {first.reason}",
                        explanation(first),
                    )
            except BaseException:
                for decision in chosen:
                    self._release(decision)
                raise
            async with trio.open_nursery() as nursery:
                for decision in chosen:
                    nursery.start_soon(run_one, decision)
            if failed:
                raise failed[0]
            if len(results) >= replicas:
                break
        if len(results) < replicas:
            detail = "; ".join(problems) or "no other node offers it"
            raise StepExecutionError(
                f"step {request.step!r} needs {replicas} nodes running {tool!r} to compare "
                f"(verify.replicas), but only {len(results)} returned a result: {detail}",
                node=first.node if first else None,
                reason=first.reason if first else None,
            )
        return self._compare(request, results, order, first)

    def _deterministic(self, request: ToolCall, decision: Decision) -> bool:
        if decision.local:
            return self.tools.get(request.tool, request.version).deterministic
        state = self.registry.get(decision.node)
        card = state.tool(request.tool, request.version, self.registry.now()) if state else None
        return bool(card is not None and card.deterministic)

    def _compare(
        self,
        request: ToolCall,
        results: dict[str, dict[str, Any]],
        order: list[str],
        first: Decision | None,
    ) -> ToolOutcome:
        groups: dict[bytes, list[str]] = {}
        for node in order:
            groups.setdefault(canonical_json(results[node]), []).append(node)
        n = len(order)
        if len(groups) == 1:
            names = ", ".join(short(x) for x in order)
            reason = f"verified: {n} nodes returned the same output ({names})"
            if first is not None:
                reason += f"; first placed: {first.reason}"
            return ToolOutcome(results[order[0]], order[0], reason)
        largest = max(groups.values(), key=len)
        outvoted = [x for x in order if x not in largest] if len(largest) * 2 > n else []
        for node in outvoted:
            if node != self.host.peer_id:
                self.registry.record_failure(node)
                self.registry.exclude(
                    node,
                    f"its output for {request.tool} disagreed with {len(largest)} of {n} nodes "
                    f"running the same step ({request.idempotency_key})",
                )
        said = "; ".join(
            f"{', '.join(short(x) for x in nodes)} returned {_preview(results[nodes[0]])}"
            for nodes in groups.values()
        )
        verdict = (
            f"; outvoted and excluded: {', '.join(short(x) for x in outvoted)}" if outvoted else ""
        )
        raise StepExecutionError(
            f"the {n} replicas of step {request.step!r} ({request.tool}) disagree: {said}{verdict}",
            node=first.node if first else None,
            reason=first.reason if first else None,
        )

    async def _place(
        self,
        request: ToolCall,
        tried: list[str],
        prefer: str | None = None,
        wait_until: float | None = None,
    ) -> Decision:
        """Place the step. ``prefer`` (where it ran before an interruption or a lost stream)
        is asked again first if it is a candidate; its card gets ``placement_wait_s`` to
        reappear. If no node offers the tool (none ever did, or the only one is restarting),
        wait for a provider to appear up to :meth:`provider_wait_s`; if every provider was
        tried or is excluded, wait only until ``wait_until`` (a lost step's wait), if given.
        While it waits the step stays pending: a log line and ``on_waiting`` say why.

        If every provider is full (``Decision.busy``), wait in line for a free slot (see
        :mod:`node.slot_wait`), as long as it takes. The decision returned holds a slot on its
        node (reserved here, before anything else can place a step): the caller releases it
        (:meth:`_release`; running the step there does)."""
        if prefer is not None and prefer != self.host.peer_id and not self.joined.is_set():
            # resumed while this node starts: no card of that peer yet, nor of any other;
            # the grace for it to reappear counts from when the node has joined the swarm
            await self.joined.wait()
        now = trio.current_time()
        grace = now + self.config.placement_wait_s
        provider_deadline = now + self.provider_wait_s(request)
        if wait_until is not None:
            grace = max(grace, wait_until)
            provider_deadline = max(provider_deadline, wait_until)
        started = now
        waiting: str | None = None
        ticket: Ticket | None = None  # its place in line for a free slot, while it waits
        took_slot = False
        try:
            while True:
                candidates = self._candidates_for(request)
                now = trio.current_time()
                prev_gone = prefer is not None and all(c.node != prefer for c in candidates)
                if not prev_gone or now >= grace:
                    try:
                        decision = place(
                            _need(request),
                            None if request.package else request.version,
                            candidates,
                            exclude=tried,
                            previous=prefer,
                            policy=self.policy,
                        )
                        if not decision.busy:
                            self._reserve(decision)  # no checkpoint since place(): no race
                            took_slot = True
                            return decision
                        why = f"waiting: {decision.reason}"
                        if why != waiting:
                            waiting = why
                            self._waiting(request, why, level=logging.DEBUG)  # (a fan-out's)
                        if ticket is None:
                            ticket = self.slots.join((request.tool, request.version, request.peers))
                        await self.slots.wait(ticket)
                        continue
                    except PlacementError as exc:
                        if not candidates:
                            if now >= provider_deadline:
                                raise PlacementError(
                                    f"{exc}; waited {provider_deadline - started:g}s for a node "
                                    "offering it to appear (routing.provider_wait_s, or the "
                                    "step's wait_for_provider)"
                                ) from None
                            why = (
                                f"waiting: no live node offers {_need(request)} (waits up to "
                                f"{provider_deadline - started:.0f}s)"
                            )
                        elif now >= grace or (tried and wait_until is None):
                            raise  # every provider was tried or is excluded
                        else:
                            why = f"waiting: {exc}"
                else:
                    why = f"waiting: {short(prefer or '')} (where it ran) is not back yet"
                if why != waiting:
                    waiting = why
                    self._waiting(request, why)
                if ticket is not None:  # (waiting for something else now)
                    self.slots.leave(ticket, took_slot=False)
                    ticket = None
                await trio.sleep(PROVIDER_POLL_S)
        finally:
            if ticket is not None:
                self.slots.leave(ticket, took_slot=took_slot)
            if waiting is not None:
                self._waiting(request, None)

    def _waiting(self, request: ToolCall, why: str | None, *, level: int = logging.INFO) -> None:
        """The step starts (``why``) or stops (None) waiting for a provider."""
        if why is not None:
            log.log(level, "step %s: %s", logsafe(request.idempotency_key), why)
            self._note(request, "waiting", reason=why)
        if self.on_waiting is not None:
            self.on_waiting(request, why)

    def _reserve(self, decision: Decision) -> None:
        """Count the step on its node from the moment it is placed there: the next step
        placed (possibly before this one's offer is out) sees the slot taken."""
        if decision.local:
            self.local_running += 1
        else:
            self.registry.step_started(decision.node)

    def _release(self, decision: Decision) -> None:
        """The step placed by ``decision`` ended there (or never went): its slot is free."""
        if decision.local:
            self.local_running -= 1
        else:
            self.registry.step_ended(decision.node)
        self.slots.freed()

    async def _run_here(self, request: ToolCall, decision: Decision) -> ToolOutcome:
        """Run the step on this node's Ray (its slot was reserved by :meth:`_place`)."""
        self._note(request, "running", node=decision.node)
        try:
            extra: dict[str, Any] = {}
            if request.resources:
                extra["resources"] = request.resources
            if request.parameters:
                extra["parameters"] = dict(request.parameters)
            if request.package is not None:
                if self.packages is None:  # (placement never chooses this node then)
                    raise StepExecutionError(
                        f"this node does not install packages ({request.package}): set "
                        f"{INSTALL_HINT}",
                        node=decision.node,
                        reason=decision.reason,
                    )
                ran = await self.packages.run_package(
                    request.package,
                    request.package_tool,
                    request.version,
                    request.args,
                    request.idempotency_key,
                    **extra,
                )
                outputs = ran.outputs
            else:
                outputs = await self.run_local(
                    request.tool, request.version, request.args, request.idempotency_key, **extra
                )
        except ToolError as exc:
            raise StepExecutionError(
                error_text(exc),
                node=decision.node,
                reason=decision.reason,
                error_type=getattr(exc, "exc_type", None) or type(exc).__name__,
            ) from None
        finally:
            self._release(decision)
        return ToolOutcome(outputs, decision.node, decision.reason)

    async def _run_remote(self, request: ToolCall, decision: Decision) -> ToolOutcome:
        """Hand the step to the peer of ``decision`` (its slot there was reserved by
        :meth:`_place`, and is released when this returns)."""
        try:
            return await self._delegate(request, decision)
        finally:
            self._release(decision)

    async def _delegate(self, request: ToolCall, decision: Decision) -> ToolOutcome:
        peer = decision.node
        hid = f"{request.idempotency_key}@{peer}"
        if request.attempt:  # a retry is a new handoff, never a re-attach to the last one
            hid += f"#retry{request.attempt}"
        journal = self.journal
        stored = await journal.lookup(hid, direction="out", peer=peer)
        if stored is not None and stored.status == "SUCCESSFUL" and stored.outputs is not None:
            # recorded before this node stopped, but the engine did not commit it: no rerun
            return ToolOutcome(
                stored.outputs, peer, f"{decision.reason} (result recorded before a restart)"
            )
        # the same attempt if it had not finished or its stream was lost (a re-attach: the
        # peer joins it or answers from its journal), else the next one
        epoch = 0 if stored is None else stored.epoch + (stored.status not in ("RUNNING", "LOST"))
        state = self.registry.get(peer)
        if not self.host.is_connected(peer):
            await self.host.connect(peer, state.addrs if state else [])
        tool_card = (
            state.tool(request.tool, request.version, self.registry.now()) if state else None
        )

        def check(outputs: dict[str, Any]) -> None:
            problem = self._check_result(request, outputs, tool_card)
            if problem is not None:
                raise InvalidResultError(
                    peer,
                    f"peer {peer} returned a result for {request.tool} that fails the tool's "
                    f"output schema: {problem}",
                )

        gate = self._gates.get(peer)
        if gate is None:
            gate = self._gates[peer] = trio.Semaphore(self.config.max_inflight_per_peer)
        if gate.value == 0:
            # (placement keeps within this limit: only re-attaches, placed without a free
            # slot, can find the gate full)
            self._note(
                request,
                "waiting",
                node=peer,
                reason=f"waiting: {self.config.max_inflight_per_peer} steps of this node "
                f"already in flight at {short(peer)}",
            )
        # no more steps in flight at one peer than a node accepts from one peer (our own
        # limit, the default everywhere): beyond, they wait here instead of being refused
        async with gate:
            self._note(request, "running", node=peer)
            started = time.monotonic()
            try:
                outcome = await self._offer(request, peer, hid, epoch, stored is not None, check)
            except HandoffRejectedError as exc:
                if exc.code != "superseded" or exc.epoch is None:
                    raise
                # the peer remembers a later attempt than we do (our record was pruned)
                outcome = await self._offer(request, peer, hid, exc.epoch + 1, True, check)
        run_ms = (time.monotonic() - started) * 1000
        # while the step still counts as outstanding: that is what the peer sustained
        self.registry.record_success(peer, outcome.rtt_ms, tool=request.tool, run_ms=run_ms)
        return ToolOutcome(outcome.outputs, peer, decision.reason)

    async def _offer(
        self,
        request: ToolCall,
        peer: str,
        hid: str,
        epoch: int,
        journal_first: bool,
        check: Callable[[dict[str, Any]], None],
    ) -> HandoffOutcome:
        """Offer one attempt (``epoch``) of the step to ``peer``; journal how it ended."""
        journal = self.journal
        record = functools.partial(
            journal.sync.record_outcome,
            hid,
            direction="out",
            peer=peer,
            tool=request.tool,
            workflow_id=request.workflow_id,
            step=request.step,
            epoch=epoch,
        )
        if journal_first:
            # a later attempt: if this node stops now, the restart re-attaches to it (a first
            # attempt needs no record: epoch 0 is where a re-attach starts anyway)
            await journal.call(record, status="RUNNING")
        offer = handoff.Offer(
            # stable per (step, peer): asking the same peer again after a lost stream or a
            # restart joins the running job or gets its stored result instead of a rerun
            handoff_id=hid,
            workflow_id=request.workflow_id,
            step=request.step,
            tool=request.tool,
            version=request.version,
            args=request.args,
            deadline_ms=int(self.config.default_deadline_s * 1000),
            hops=1,
            epoch=epoch,
            package=request.package,
            parameters=dict(request.parameters) or None,
        )

        async def recorded(outcome: HandoffOutcome) -> None:
            await journal.call(
                record, status="SUCCESSFUL", outputs=outcome.outputs, receipt=outcome.receipt
            )

        try:
            return await delegate(
                self.host,
                peer,
                offer,
                network=self.network,
                config=self.config,
                check=check,
                record=recorded,
                background=self._nursery,
                streams=self.streams,
            )
        except HandoffError as exc:
            if isinstance(exc, HandoffCanceledError):
                status, code = "CANCELED", "canceled"
            elif isinstance(exc, HandoffFailedError):
                status, code = "FAILED", exc.code
            elif isinstance(exc, HandoffRejectedError):
                status, code = "REJECTED", exc.code
            elif isinstance(exc, HandoffGaveUpError | HandoffProtocolError):
                status, code = "GAVE_UP", "lost"  # we canceled it, or cannot trust it
            elif isinstance(exc, HandoffLostError):
                status, code = "LOST", "lost"  # it may still run there: re-attach to it
            else:
                status, code = "FAILED", "invalid_result"
            with trio.CancelScope(shield=True):
                await journal.call(record, status=status, error=exc.message[:4096], code=code)
            raise

    def _check_result(
        self, request: ToolCall, outputs: dict[str, Any], tool_card: ToolCard | None
    ) -> str | None:
        """Check a peer's outputs against the tool's output model if this node has the same
        tool (name and version), else against the output schema of the peer's card."""
        if request.package is not None:
            return None  # installed for the step there: no schema known here
        version = tool_card.version if tool_card is not None else request.version
        if self.tools.has(request.tool, version):
            local = self.tools.get(request.tool, version)
            if tool_card is None or local.version == tool_card.version:
                return check_outputs(outputs, model=local.output_model)
        if tool_card is not None:
            return check_outputs(outputs, schema=tool_card.output_schema)
        return None

    async def _run_sub_workflow(self, request: ToolCall, placed: PlacementCallback) -> ToolOutcome:
        """A ``workflow: ID`` step: always here, on the node that runs its parent."""
        if self.sub_workflows is None:
            raise StepExecutionError(
                f"step {request.step!r} runs workflow {request.workflow!r}, but this node "
                "runs no sub-workflows",
                node=self.host.peer_id,
            )
        return await self.sub_workflows(request, placed)


class _Deadline(Abandon):
    """The :class:`Abandon` of a step with a timeout: abandoned once ``deadline`` passed
    (its reason then), or when the one it wraps (the workflow's) is."""

    def __init__(self, outer: Abandon | None, deadline: float, why: str) -> None:
        self._outer = outer
        self._deadline = deadline
        self._why = why
        self._own: str | None = None

    @property
    def reason(self) -> str | None:  # type: ignore[override]
        if self._outer is not None and self._outer.reason is not None:
            return self._outer.reason
        if self._own is not None:
            return self._own
        return self._why if trio.current_time() >= self._deadline else None

    def request(self, reason: str) -> None:
        if self._outer is not None:
            self._outer.request(reason)
        elif self._own is None:
            self._own = reason


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _need(request: ToolCall) -> str:
    """What a step needs of a node, for placement's messages: its tool, or its package."""
    return request.tool if request.package is None else f"package {request.package}"


def _placement_problem(exc: PlacementError, request: ToolCall) -> str:
    if request.package is not None:
        return (
            f"step {request.step!r} needs package {request.package!r}, but no node that "
            f"installs packages could run it: set {INSTALL_HINT} ({exc})"
        )
    if not request.peers:
        return str(exc)
    allowed = ", ".join(short(p) for p in request.peers)
    return f"{exc} (the step's placement.peers allows only: {allowed})"


def _preview(outputs: dict[str, Any], limit: int = 200) -> str:
    text = canonical_json(outputs).decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[: limit - 1] + "…"
