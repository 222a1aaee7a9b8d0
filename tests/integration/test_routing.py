"""Routing that does not give up on a live swarm: a provider lost mid-step is waited for and
re-attached to; a step with no provider at all waits for one to appear (routing.provider_wait_s,
or the step's wait_for_provider); a failed workflow resumed by hand reruns only what had not
finished. Real libp2p hosts and a real Ray in one trio run."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from node.daemon import Node
from tests.integration.harness import launch, make_node, wait_until
from workflows.dsl import parse_workflow
from workflows.status import WorkflowStatus

pytestmark = pytest.mark.usefixtures("ray_cluster")

TWO_STEPS = """
id: two
steps:
  - name: first
    tool: util.echo
    inputs: [{name: value, value: 1}]
  - name: nap
    tool: util.sleep
    inputs: [{name: seconds, value: "{{steps.first.outputs.result}}"}]
"""


async def test_the_only_provider_killed_mid_step_and_restarted_is_waited_for(
    tmp_path: Path,
) -> None:
    """a, the only node with util, goes away while it runs c's second step and comes back
    (same home and peer id; its port if free): c waits for it instead of failing the workflow,
    offers the step there again, and the first step is not rerun."""
    a = make_node(tmp_path, "a", "util")
    c = make_node(tmp_path, "c", "none")
    async with trio.open_nursery() as nursery:
        a_scope = await launch(nursery, a)
        await launch(nursery, c)
        await c.host.connect(a.peer_id, a.host.addrs())
        await c.discovery.exchange(a.peer_id)
        wid, _ = await c.workflows.submit(parse_workflow(TWO_STEPS), {}, "two-1")
        await wait_until(lambda: a.handoff.running == 1 and a.handoff.started_jobs == 2, what="nap")
        a_scope.cancel()  # a dies with the step half done
        await wait_until(lambda: not c.host.is_connected(a.peer_id), what="c losing a")
        await trio.sleep(1)  # c's first attempts to reach a fail meanwhile
        assert (await c.workflows.view(wid)).status is WorkflowStatus.RUNNING

        again: Node = make_node(tmp_path, "a", "util", bootstrap=c.host.addrs())
        assert again.peer_id == a.peer_id
        await launch(nursery, again)
        with trio.fail_after(60):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert {s.name: s.node for s in view.steps} == {"first": a.peer_id, "nap": a.peer_id}
        assert {s.name: s.attempts for s in view.steps}["first"] == 1  # not rerun
        assert again.handoff.started_jobs == 1  # only the interrupted step ran again
        # what a watch of it shows: the nap waited for a, and was re-attached there
        nap = [e for e in c.progress.events(wid) if e.step == "nap"]
        waits = [e.reason or "" for e in nap if e.kind == "waiting"]
        assert any(w.startswith("waiting: lost ") for w in waits), nap
        assert "reattached" in [e.kind for e in nap] and nap[-1].kind == "finished", nap
        nursery.cancel_scope.cancel()


async def test_a_step_whose_provider_never_returns_fails_after_the_wait(tmp_path: Path) -> None:
    a = make_node(tmp_path, "a", "util")
    c = make_node(tmp_path, "c", "none", routing={"provider_wait_s": 2})
    async with trio.open_nursery() as nursery:
        a_scope = await launch(nursery, a)
        await launch(nursery, c)
        await c.host.connect(a.peer_id, a.host.addrs())
        await c.discovery.exchange(a.peer_id)
        wid, _ = await c.workflows.submit(parse_workflow(TWO_STEPS), {}, "two-2")
        await wait_until(lambda: a.handoff.running == 1 and a.handoff.started_jobs == 2, what="nap")
        a_scope.cancel()
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED
        assert "no node could run tool 'util.sleep' for 2s" in (view.error or ""), view.error
        nursery.cancel_scope.cancel()


async def test_resuming_a_failed_workflow_reruns_only_what_had_not_finished(
    tmp_path: Path,
) -> None:
    """The second step fails because its only provider is gone for longer than the wait;
    once the provider is back, 'resume' reruns that step only: the first stays finished."""
    a = make_node(tmp_path, "a", "util")
    c = make_node(tmp_path, "c", "none", routing={"provider_wait_s": 1})
    async with trio.open_nursery() as nursery:
        a_scope = await launch(nursery, a)
        await launch(nursery, c)
        await c.host.connect(a.peer_id, a.host.addrs())
        await c.discovery.exchange(a.peer_id)
        wid, _ = await c.workflows.submit(parse_workflow(TWO_STEPS), {}, "two-3")
        await wait_until(lambda: a.handoff.running == 1 and a.handoff.started_jobs == 2, what="nap")
        a_scope.cancel()
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED

        again = make_node(tmp_path, "a", "util", bootstrap=c.host.addrs())
        await launch(nursery, again)
        await wait_until(lambda: c.registry.has_fresh_card(a.peer_id), what="a back")
        await c.workflows.resume(wid)
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        steps = {s.name: s for s in view.steps}
        assert steps["first"].attempts == 1  # finished before the failure: not rerun
        assert again.handoff.started_jobs == 1  # the step that had not finished, only
        nursery.cancel_scope.cancel()


ONE_SLEEP = """
id: one
steps:
  - name: nap
    tool: util.sleep
    inputs: [{name: seconds, value: 0.2}]
"""


async def test_a_provider_that_appears_after_submission_is_used(tmp_path: Path) -> None:
    """c has no tools and knows no peer offering util: its step waits (pending, the wait
    reported) instead of failing, and runs on a as soon as a joins."""
    c = make_node(tmp_path, "c", "none")
    waits: list[tuple[str, str | None]] = []
    async with trio.open_nursery() as nursery:
        await launch(nursery, c)
        c.executor.on_waiting = lambda call, why: waits.append((call.step, why))
        wid, _ = await c.workflows.submit(parse_workflow(ONE_SLEEP), {}, "late-1")
        await wait_until(lambda: bool(waits), what="the step waiting")
        assert waits[0][0] == "nap" and "util.sleep" in (waits[0][1] or ""), waits
        view = await c.workflows.view(wid)
        assert view.status is WorkflowStatus.RUNNING
        assert [(s.name, s.status) for s in view.steps] == [("nap", "PENDING")], view

        a = make_node(tmp_path, "a", "util", bootstrap=c.host.addrs())
        await launch(nursery, a)
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.steps[0].node == a.peer_id and view.steps[0].attempts == 1
        assert waits[-1] == ("nap", None)  # the wait ended
        nursery.cancel_scope.cancel()


async def test_with_no_provider_the_step_fails_after_the_wait_naming_the_tool(
    tmp_path: Path,
) -> None:
    c = make_node(tmp_path, "c", "none", routing={"provider_wait_s": 1})
    async with trio.open_nursery() as nursery:
        await launch(nursery, c)
        started = trio.current_time()
        wid, _ = await c.workflows.submit(parse_workflow(ONE_SLEEP), {}, "none-1")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED
        assert trio.current_time() - started >= 1
        error = view.error or ""
        assert "no node in the swarm offers tool 'util.sleep'" in error, error
        assert "waited 1s for a node offering it to appear" in error, error
        nursery.cancel_scope.cancel()


async def test_a_step_s_wait_for_provider_overrides_the_node_s(tmp_path: Path) -> None:
    """The node would wait 5 minutes; the step says 1s, and fails after about that."""
    c = make_node(tmp_path, "c", "none")
    assert c.config.routing.provider_wait_s == 300
    flow = ONE_SLEEP.replace(
        "    tool: util.sleep\n", "    tool: util.sleep\n    wait_for_provider: 1s\n"
    )
    async with trio.open_nursery() as nursery:
        await launch(nursery, c)
        wid, _ = await c.workflows.submit(parse_workflow(flow), {}, "own-wait")
        with trio.fail_after(30):
            view = await c.workflows.wait(wid)
        assert view.status is WorkflowStatus.FAILED
        assert "waited 1s for a node offering it" in (view.error or ""), view.error
        nursery.cancel_scope.cancel()


async def test_a_delegator_restarted_mid_step_re_attaches_before_placing_elsewhere(
    tmp_path: Path,
) -> None:
    """c hands a step to a and is killed while a runs it. c comes back (same home) offering
    the tool itself and with no grace for the old node: its resumed step still waits until c
    has joined the swarm, finds a again and re-attaches, instead of running the step a
    second time at home."""
    a = make_node(tmp_path, "a", "util")
    c = make_node(tmp_path, "c", "none", bootstrap=[])
    flow = ONE_SLEEP.replace("value: 0.2", "value: 3")
    async with trio.open_nursery() as nursery:
        await launch(nursery, a)
        c_scope = await launch(nursery, c)
        await c.host.connect(a.peer_id, a.host.addrs())
        await c.discovery.exchange(a.peer_id)
        wid, _ = await c.workflows.submit(parse_workflow(flow), {}, "restart-1")
        await wait_until(lambda: a.handoff.running == 1, what="the step running on a")
        c_scope.cancel()

        again = make_node(
            tmp_path, "c", "util", bootstrap=a.host.addrs(), handoff={"placement_wait_s": 0}
        )
        await launch(nursery, again)
        with trio.fail_after(30):
            view = await again.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.steps[0].node == a.peer_id, view.steps[0].reason
        assert "re-attach" in (view.steps[0].reason or ""), view.steps[0].reason
        assert a.handoff.started_jobs == 1  # joined, not run again
        nursery.cancel_scope.cancel()
