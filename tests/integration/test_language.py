"""The workflow language's step rules on real nodes (real libp2p hosts, the session's Ray):
depends_on, when (and skipped steps in status), foreach (local and routed to a peer, with
max_parallel), retries counted through a file, timeout (the step is stopped and its slot
freed), on_error continue and fallback, placement local/remote."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trio

from node.daemon import Node
from tests.integration.harness import launch, launch_delegator, make_node
from workflows.dsl import parse_workflow
from workflows.status import WorkflowStatus

pytestmark = pytest.mark.usefixtures("ray_cluster")


async def run_yaml(node: Node, text: str, timeout_s: float = 60.0, **inputs: Any) -> Any:
    spec = parse_workflow(text)
    wid, _ = await node.workflows.submit(spec, inputs)
    with trio.fail_after(timeout_s):
        return await node.workflows.wait(wid)


def steps_of(view: Any) -> dict[str, Any]:
    return {step.name: step for step in view.steps}


async def test_when_depends_on_and_skipped_steps_on_one_node(tmp_path: Path):
    flow = """
id: branches
inputs: [{name: mode}, {name: text, default: "a b c"}]
steps:
  - name: count
    tool: text.word_count
    inputs: [{name: text, value: "{{inputs.text}}"}]
  - name: loud
    tool: text.upper
    when: "inputs.mode == 'loud' and steps.count.outputs.result >= 3"
    inputs: [{name: text, value: "{{inputs.text}}"}]
  - name: after_loud
    tool: text.reverse
    inputs: [{name: text, value: "{{steps.loud.outputs.result}}"}]
  - name: quiet
    tool: text.lower
    depends_on: [count]
    when: "inputs.mode != 'loud'"
    inputs: [{name: text, value: "QUIET"}]
outputs:
  - {name: loud, value: "{{steps.after_loud.outputs.result}}"}
  - {name: quiet, value: "{{steps.quiet.outputs.result}}"}
"""
    node = make_node(tmp_path, "a", "text")
    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        loud = await run_yaml(node, flow, mode="loud")
        assert loud.status is WorkflowStatus.SUCCESSFUL, loud.error
        assert loud.outputs == {"loud": "C B A", "quiet": None}
        steps = steps_of(loud)
        assert steps["quiet"].status == "SKIPPED"
        assert "'inputs.mode != 'loud'' was false" in (steps["quiet"].reason or "").replace(
            '"', "'"
        )
        assert steps["after_loud"].status == "SUCCESSFUL"

        # watch (the node's progress log) says it was skipped, and why
        skipped = [e for e in node.progress.events(loud.workflow_id) if e.kind == "skipped"]
        assert [(e.step, e.reason) for e in skipped] == [
            ("quiet", "skipped: its condition \"inputs.mode != 'loud'\" was false")
        ]
        quiet = await run_yaml(node, flow, mode="soft")
        assert quiet.status is WorkflowStatus.SUCCESSFUL, quiet.error
        assert quiet.outputs == {"loud": None, "quiet": "quiet"}
        steps = steps_of(quiet)
        assert (steps["loud"].status, steps["after_loud"].status) == ("SKIPPED", "SKIPPED")
        assert "step 'loud' was skipped" in (steps["after_loud"].reason or "")
        assert steps["count"].status == "SUCCESSFUL"
        nursery.cancel_scope.cancel()


async def test_retries_counted_through_a_file_then_on_error(tmp_path: Path):
    counter = tmp_path / "calls.txt"
    gave_up = tmp_path / "gave_up.txt"
    flow = f"""
id: flaky
steps:
  - name: eventually
    tool: util.flaky
    retries: {{max: 3, backoff: 50ms, on: [ValueError]}}
    inputs: [{{name: path, value: "{counter}"}}, {{name: failures, value: 2}}]
  - name: never
    tool: util.flaky
    retries: {{max: 1, backoff: 10ms}}
    on_error: {{continue: {{result: -1}}}}
    inputs: [{{name: path, value: "{gave_up}"}}, {{name: failures, value: 100}}]
  - name: wrong_type
    tool: util.fail
    retries: {{max: 5, backoff: 10ms, on: [KeyError]}}
    on_error:
      fallback:
        tool: text.upper
        inputs: [{{name: text, value: "{{{{error.type}}}}: {{{{error.message}}}}"}}]
    inputs: [{{name: message, value: boom}}, {{name: error, value: ValueError}}]
outputs:
  - {{name: calls, value: "{{{{steps.eventually.outputs.result}}}}"}}
  - {{name: never, value: "{{{{steps.never.outputs.result}}}}"}}
  - {{name: fallback, value: "{{{{steps.wrong_type.outputs.result}}}}"}}
"""
    node = make_node(tmp_path, "a", "text,util")
    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        view = await run_yaml(node, flow)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        # two failures, then the third call succeeded: the file has exactly three lines
        assert view.outputs["calls"] == 3
        assert counter.read_text().splitlines() == ["call"] * 3
        # one call and one retry, then on_error continue with the default output
        assert view.outputs["never"] == -1
        assert len(gave_up.read_text().splitlines()) == 2
        # a ValueError is not retried by `on: [KeyError]`: the fallback ran once, with it
        assert view.outputs["fallback"].startswith("VALUEERROR: ")
        assert "BOOM" in view.outputs["fallback"]
        steps = steps_of(view)
        assert steps["eventually"].attempts == 3
        waits = [
            e.reason or ""
            for e in node.progress.events(view.workflow_id)
            if e.step == "eventually" and e.kind == "waiting"
        ]
        assert [w.split(" after: ")[0] for w in waits] == [
            "waiting: retry 1 of 3 in 0.05s",
            "waiting: retry 2 of 3 in 0.1s",
        ]
        assert "flaky: call 1 of the 2 that fail" in waits[0]
        assert "on_error continue" in (steps["never"].reason or "")
        nursery.cancel_scope.cancel()


async def test_foreach_routed_to_a_peer_and_gathered_in_order(tmp_path: Path):
    flow = """
id: fan
inputs: [{name: words}]
steps:
  - name: up
    tool: text.upper
    foreach: {items: "{{inputs.words}}", max_parallel: 2}
    inputs: [{name: text, value: "{{index}}:{{item}}"}]
  - name: total
    tool: text.word_count
    inputs: [{name: text, value: "n {{steps.up.outputs.result}}"}]
outputs:
  - {name: upper, value: "{{steps.up.outputs.result}}"}
  - {name: words, value: "{{steps.total.outputs.result}}"}
"""
    a = make_node(tmp_path, "a", "text")
    async with trio.open_nursery() as nursery:
        c, _ = await launch_delegator(nursery, tmp_path, a)
        words = [f"w{i}" for i in range(7)]
        view = await run_yaml(c, flow, words=words)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.outputs["upper"] == [f"{i}:W{i}" for i in range(7)]
        # the list interpolated into a text is JSON: "n" and one word per item
        assert view.outputs["words"] == 8
        up = steps_of(view)["up"]
        assert (up.status, up.node) == ("SUCCESSFUL", a.peer_id)
        assert up.reason == "foreach: 7 items"
        empty = await run_yaml(c, flow, words=[])
        assert empty.status is WorkflowStatus.SUCCESSFUL, empty.error
        assert empty.outputs["upper"] == []
        bad = await run_yaml(c, flow, words="not a list")
        assert bad.status is WorkflowStatus.FAILED
        assert "foreach of step 'up' needs a list, not str" in (bad.error or "")
        nursery.cancel_scope.cancel()


async def test_timeout_stops_a_delegated_step_and_frees_its_slot(tmp_path: Path):
    flow = """
id: slow
steps:
  - name: nap
    tool: util.sleep
    timeout: 1s
    retries: {max: 1, backoff: 10ms, on: [StepTimeout]}
    inputs: [{name: seconds, value: 30}]
"""
    a = make_node(tmp_path, "a", "util")
    async with trio.open_nursery() as nursery:
        c, _ = await launch_delegator(nursery, tmp_path, a)
        started = trio.current_time()
        view = await run_yaml(c, flow, timeout_s=40)
        took = trio.current_time() - started
        assert view.status is WorkflowStatus.FAILED
        assert "step stopped after its timeout of 1s" in (view.error or "")
        assert steps_of(view)["nap"].attempts == 2  # the first try and one retry
        assert took < 25, took  # not the 30 s the tool would sleep
        # the peer stopped the step: its slots are free again
        with trio.fail_after(10):
            while a.handoff.running > 0:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_placement_local_and_remote(tmp_path: Path):
    flow = """
id: placed
steps:
  - name: here
    tool: text.upper
    placement: {mode: local}
    inputs: [{name: text, value: x}]
"""
    remote = flow.replace("mode: local", "mode: remote")
    a = make_node(tmp_path, "a", "text")
    async with trio.open_nursery() as nursery:
        c, _ = await launch_delegator(nursery, tmp_path, a)
        # c has no text tools: local placement fails at once, naming the fix
        view = await run_yaml(c, flow)
        assert view.status is WorkflowStatus.FAILED
        assert "placement 'local'" in (view.error or "")
        # on a, remote placement never runs it on a itself: a's only peer (c) has no text
        # tools, so it fails after the step's provider wait
        no_peer = remote.replace("    inputs:", "    wait_for_provider: 1s\n    inputs:")
        view = await run_yaml(a, no_peer, timeout_s=30)
        assert view.status is WorkflowStatus.FAILED
        assert "text.upper" in (view.error or "")
        local_on_a = await run_yaml(a, flow)
        assert local_on_a.status is WorkflowStatus.SUCCESSFUL, local_on_a.error
        assert steps_of(local_on_a)["here"].node == a.peer_id
        remote_from_c = await run_yaml(c, remote)
        assert remote_from_c.status is WorkflowStatus.SUCCESSFUL, remote_from_c.error
        assert steps_of(remote_from_c)["here"].node == a.peer_id
        nursery.cancel_scope.cancel()


def documented_workflows() -> list[tuple[str, str]]:
    """Every ```yaml block of docs/workflows.md that is a whole workflow (has an id), but
    those with sub-workflow steps: they need the node's registry, and run in
    tests/integration/test_workflow_registry.py."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "workflows.md"
    blocks = re.findall(r"```yaml\n(.*?)```", doc.read_text(), flags=re.S)
    return [
        (f"workflows.md block {i + 1}", block)
        for i, block in enumerate(blocks)
        if re.search(r"^id:", block, flags=re.M)
        and not re.search(r"^\s+workflow:", block, flags=re.M)
    ]


async def test_every_example_of_the_docs_runs(tmp_path: Path):
    examples = documented_workflows()
    assert len(examples) >= 2
    node = make_node(tmp_path, "a", "all")
    async with trio.open_nursery() as nursery:
        await launch(nursery, node)
        results = {}
        for where, text in examples:
            view = await run_yaml(node, text)
            assert view.status is WorkflowStatus.SUCCESSFUL, (where, view.error)
            results[parse_workflow(text).id] = view
        rules = results["rules"]
        assert rules.outputs == {
            "shouted": ["0=SWARM", "1=OF", "2=NODES"],
            "reversed": "cba",
            "skipped": None,
            "careful": "RECOVERED FROM VALUEERROR",
        }
        assert steps_of(rules)["never"].status == "SKIPPED"
        nursery.cancel_scope.cancel()


async def test_a_resumed_foreach_runs_only_the_items_that_had_not_finished(tmp_path: Path):
    flow = """
id: naps
inputs: [{name: naps}]
steps:
  - name: nap
    tool: util.sleep
    foreach: {items: "{{inputs.naps}}", max_parallel: 1}
    inputs: [{name: seconds, value: "{{item}}"}]
outputs: [{name: slept, value: "{{steps.nap.outputs.result}}"}]
"""
    naps = [0, 0, 0, 1.5, 0]
    a = make_node(tmp_path, "a", "util")
    async with trio.open_nursery() as nursery:
        scope = await launch(nursery, a)
        wid, _ = await a.workflows.submit(parse_workflow(flow), {"naps": naps})

        def rows() -> dict[str, Any]:
            return {r.task_id: r for r in a.storage.list_tasks(wid)}

        # stopped (as if killed) while item 3 runs, items 0-2 journaled
        with trio.fail_after(30):
            while not (rows().get("nap[3]") and rows()["nap[3]"].status == "RUNNING"):
                await trio.sleep(0.02)
        scope.cancel()
        done = rows()
        assert all(done[f"nap[{i}]"].status == "SUCCESSFUL" for i in range(3))
        assert "nap[4]" not in done

        again = make_node(tmp_path, "a", "util")
        await launch(nursery, again)
        with trio.fail_after(60):
            view = await again.workflows.wait(wid)
        assert view.status is WorkflowStatus.SUCCESSFUL, view.error
        assert view.outputs == {"slept": [0.0, 0.0, 0.0, 1.5, 0.0]}
        after = {r.task_id: r for r in again.storage.list_tasks(wid)}
        # each run of an item is placed (and counted) once: the finished ones never again
        assert [after[f"nap[{i}]"].attempts for i in range(5)] == [1, 1, 1, 2, 1]
        nursery.cancel_scope.cancel()
