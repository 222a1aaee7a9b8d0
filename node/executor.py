"""The node's step executor: place each step locally (Ray) or on a peer (handoff)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from node.config import HandoffConfig, NetworkConfig
from node.errors import NodeError, PlacementError
from node.handoff.delegator import (
    HandoffError,
    HandoffFailedError,
    HandoffRejectedError,
    delegate,
)
from node.p2p import P2PHost
from node.registry import PeerRegistry
from node.scheduler import Candidate, Decision, place
from protocols import handoff, logsafe
from workflows.errors import ToolError
from workflows.tool_steps import PlacementCallback, StepExecutionError, ToolCall, ToolOutcome
from workflows.tools import ToolRegistry

log = logging.getLogger(__name__)

# (tool, version, args, idempotency key) -> outputs
LocalRunner = Callable[[str, str | None, dict[str, Any], str | None], Awaitable[dict[str, Any]]]


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
    ) -> None:
        self.host = host
        self.registry = registry
        self.tools = tools
        self.run_local = run_local
        self.local_capacity = local_capacity
        self.network = network
        self.config = config
        self.local_running = 0

    def candidates(self, tool: str, version: str | None) -> list[Candidate]:
        out = []
        if self.tools.has(tool, version):
            t = self.tools.get(tool, version)
            out.append(
                Candidate(
                    self.host.peer_id, True, t.version, self.local_running, self.local_capacity
                )
            )
        for state, card in self.registry.providers(tool, version):
            load = state.card.load if state.card else None
            out.append(
                Candidate(
                    state.peer_id,
                    False,
                    card.version,
                    running=(load.running if load else 0) + state.inflight,
                    capacity=load.capacity if load else 1,
                    rtt_ms=state.rtt_ms,
                    recent_failures=self.registry.recent_failures(state.peer_id),
                )
            )
        return out

    async def execute(self, request: ToolCall, placed: PlacementCallback) -> ToolOutcome:
        tried: list[str] = []
        last_error: str | None = None
        decision: Decision | None = None
        for _attempt in range(self.config.max_attempts):
            try:
                decision = await self._place(request, tried)
            except PlacementError as exc:
                message = str(exc) if last_error is None else f"{exc}; last error: {last_error}"
                raise StepExecutionError(
                    message,
                    node=decision.node if decision else None,
                    reason=decision.reason if decision else None,
                ) from None
            tried.append(decision.node)
            await placed(decision.node, decision.reason)
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
                log.info(
                    "step %s: %s; trying another node",
                    logsafe(request.idempotency_key),
                    logsafe(exc),
                )
            except (HandoffError, NodeError) as exc:
                last_error = str(exc)
                self.registry.record_failure(decision.node)
                log.warning(
                    "step %s: %s; trying another node",
                    logsafe(request.idempotency_key),
                    logsafe(exc),
                )
        raise StepExecutionError(
            f"tool {request.tool!r} failed on {len(tried)} node(s); last error: {last_error}",
            node=decision.node if decision else None,
            reason=decision.reason if decision else None,
        )

    async def _place(self, request: ToolCall, tried: list[str]) -> Decision:
        """Place the step; if no node offers the tool yet (a peer may still be joining),
        wait up to ``placement_wait_s`` for one to appear."""
        deadline = trio.current_time() + self.config.placement_wait_s
        previous = request.previous_node if not tried else None
        while True:
            candidates = self.candidates(request.tool, request.version)
            waiting_for_previous = previous is not None and all(
                c.node != previous for c in candidates
            )
            if not waiting_for_previous or trio.current_time() >= deadline:
                try:
                    return place(
                        request.tool, request.version, candidates, exclude=tried, previous=previous
                    )
                except PlacementError:
                    if tried or trio.current_time() >= deadline:
                        raise
            # a peer may still be joining (after a restart, the one the step ran on)
            await trio.sleep(0.1)

    async def _run_here(self, request: ToolCall, decision: Decision) -> ToolOutcome:
        self.local_running += 1
        try:
            outputs = await self.run_local(
                request.tool, request.version, request.args, request.idempotency_key
            )
        except ToolError as exc:
            raise StepExecutionError(str(exc), node=decision.node, reason=decision.reason) from None
        finally:
            self.local_running -= 1
        return ToolOutcome(outputs, decision.node, decision.reason)

    async def _run_remote(self, request: ToolCall, decision: Decision) -> ToolOutcome:
        peer = decision.node
        state = self.registry.get(peer)
        if not self.host.is_connected(peer):
            await self.host.connect(peer, state.addrs if state else [])
        offer = handoff.Offer(
            # stable per (step, peer): asking the same peer again after a lost stream or a
            # restart joins the running job or gets its stored result instead of a rerun
            handoff_id=f"{request.idempotency_key}@{peer}",
            workflow_id=request.workflow_id,
            step=request.step,
            tool=request.tool,
            version=request.version,
            args=request.args,
            deadline_ms=int(self.config.default_deadline_s * 1000),
            hops=1,
        )
        if state is not None:
            state.inflight += 1
        try:
            outcome = await delegate(
                self.host, peer, offer, network=self.network, config=self.config
            )
        finally:
            if state is not None:
                state.inflight -= 1
        self.registry.record_success(peer, outcome.rtt_ms)
        return ToolOutcome(outcome.outputs, peer, decision.reason)
