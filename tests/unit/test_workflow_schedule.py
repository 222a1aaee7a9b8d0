"""The node's scheduler of registered workflows (node.workflow_schedule) on trio's virtual
clock, and the registry's checks of sub-workflows (node.workflow_registry), without a node."""

from __future__ import annotations

import calendar
import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from node.workflow_registry import Registered, WorkflowRegistry, folder_files, workflow_files
from node.workflow_schedule import WorkflowScheduler, next_start_number
from workflows.dsl import WorkflowSpec, parse_workflow
from workflows.errors import WorkflowDefinitionError

BASE = calendar.timegm((2026, 12, 7, 10, 0, 0, 0, 0, 0))  # 2026-12-07T10:00:00Z
STEP = "steps: [{name: s, tool: text.upper, inputs: [{name: text, value: x}]}]\n"


def registry_of(*texts: str) -> WorkflowRegistry:
    registry = WorkflowRegistry()
    for text in texts:
        spec = parse_workflow(text)
        registry.workflows[spec.id] = Registered(spec, f"/w/{spec.id}.yaml", f"/w/{spec.id}.yaml")
    return registry


class Recorder:
    """The scheduler's start function: records (run id, metadata); ids already created are
    joined (as the node's idempotent start would)."""

    def __init__(self, known: set[str] | None = None) -> None:
        self.known = set(known or ())
        self.calls: list[str] = []

    async def start(
        self, spec: WorkflowSpec, inputs: dict[str, Any], run_id: str, meta: dict[str, Any]
    ) -> None:
        self.calls.append(run_id)
        self.known.add(run_id)

    async def known_ids(self) -> set[str]:
        return set(self.known)


async def run_for(scheduler: WorkflowScheduler, seconds: float) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.serve)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()


def life(registry: WorkflowRegistry, runs: Recorder, at: float, seconds: float, n: int) -> None:
    """The scheduler of a node started ``at`` seconds after BASE, for ``seconds``."""
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main() -> None:
        offset = BASE + at - trio.current_time()
        scheduler = WorkflowScheduler(
            registry,
            runs.start,
            runs.known_ids,
            start_number=n,
            clock=lambda: offset + trio.current_time(),
        )
        await run_for(scheduler, seconds)

    trio.run(main, clock=clock)


def test_slots_run_on_time_and_a_restart_runs_the_latest_missed_slot_only():
    registry = registry_of("id: tick\nrun: {every: 10s}\n" + STEP, "id: plain\n" + STEP)
    runs = Recorder()
    life(registry, runs, at=3, seconds=35, n=1)  # slots +10, +20, +30; not +0, begun before
    assert runs.calls == [
        "tick@2026-12-07T10:00:10Z",
        "tick@2026-12-07T10:00:20Z",
        "tick@2026-12-07T10:00:30Z",
    ]
    runs.calls.clear()
    life(registry, runs, at=72, seconds=15, n=2)  # down at +38..+72: +40 to +70 missed
    # the latest missed slot (+70) at once, then +80; not +40, +50, +60
    assert runs.calls == ["tick@2026-12-07T10:01:10Z", "tick@2026-12-07T10:01:20Z"]
    runs.calls.clear()
    life(registry, runs, at=85, seconds=1, n=3)  # again within the slot of +80: nothing
    assert runs.calls == []


def test_at_start_runs_once_per_start_and_a_restart_in_the_same_slot_runs_nothing_again():
    registry = registry_of("id: boot\nrun: {at_start: true, every: 1h}\n" + STEP)
    runs = Recorder(known={"boot@2026-12-07T10:00Z"})  # this slot already ran (before a crash)
    clock = trio.testing.MockClock(autojump_threshold=0)
    offset = BASE + 5 - clock.current_time()

    async def main() -> None:
        scheduler = WorkflowScheduler(
            registry,
            runs.start,
            runs.known_ids,
            start_number=7,
            clock=lambda: offset + trio.current_time(),
        )
        await run_for(scheduler, 60)
        assert scheduler.started == ["boot@start-7"]

    trio.run(main, clock=clock)
    assert runs.calls == ["boot@start-7"]


def test_cron_schedule_and_a_start_that_fails_does_not_stop_the_scheduler():
    registry = registry_of('id: five\nrun: {cron: "*/5 * * * *"}\n' + STEP)
    calls: list[str] = []

    async def start(spec: WorkflowSpec, inputs: Any, run_id: str, meta: Any) -> None:
        calls.append(run_id)
        if len(calls) == 1:
            raise WorkflowDefinitionError("the journal said no")

    async def none() -> set[str]:
        return set()

    clock = trio.testing.MockClock(autojump_threshold=0)
    offset = BASE + 60 - clock.current_time()

    async def main() -> None:
        scheduler = WorkflowScheduler(
            registry, start, none, start_number=1, clock=lambda: offset + trio.current_time()
        )
        await run_for(scheduler, 11 * 60)
        assert scheduler.started == ["five@2026-12-07T10:10Z"]

    trio.run(main, clock=clock)
    assert calls == ["five@2026-12-07T10:05Z", "five@2026-12-07T10:10Z"]


def test_start_numbers_count_up_in_the_home(tmp_path: Path):
    assert [next_start_number(tmp_path) for _ in range(3)] == [1, 2, 3]
    assert (tmp_path / "starts").read_text() == "3\n"
    (tmp_path / "starts").write_text("garbage")
    assert next_start_number(tmp_path) == 1


def test_sub_workflow_checks_name_unknown_ids_and_cycles():
    registry = registry_of(
        "id: a\nsteps: [{name: s, workflow: b}]\n",
        "id: b\nsteps: [{name: s, workflow: c}]\n",
        "id: c\n" + STEP,
    )
    registry.check_sub_workflows(registry.workflows["a"].spec)  # a -> b -> c: fine
    back = parse_workflow("id: c\nsteps: [{name: t, workflow: a}]\n", source="c.yaml")
    with pytest.raises(WorkflowDefinitionError) as cycle:
        registry.check_sub_workflows(back)
    assert str(cycle.value) == (
        "c.yaml:2: step 't' makes workflow 'c' run itself (c -> a -> b -> c): a workflow "
        "cannot contain itself"
    )
    typo = parse_workflow("id: d\nsteps:\n  - name: t\n    workflow: bb\n", source="d.yaml")
    with pytest.raises(WorkflowDefinitionError) as unknown:
        registry.check_sub_workflows(typo)
    assert str(unknown.value) == (
        "d.yaml:3: step 't' runs workflow 'bb', which is not registered on this node "
        "(did you mean 'b'?) (registered: 'a', 'b', 'c')"
    )


def test_folder_files_in_name_order_within_the_bound(tmp_path: Path):
    for name in ["b.yaml", "a.yml", ".hidden.yaml", "c.txt", "d.yaml"]:
        (tmp_path / name).write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.yaml").write_text("x")
    (tmp_path / "dir.yaml").mkdir()
    os.mkfifo(tmp_path / "fifo.yaml")  # reading it would block forever
    files, problems = folder_files(tmp_path, max_files=2)
    assert [f.path.name for f in files] == ["a.yml", "b.yaml"]
    assert [p.error for p in problems] == [
        "3 workflow files, more than workflows.max_files (2): only the first 2 by name are read"
    ]
    assert folder_files(tmp_path / "missing", 10) == ([], [])


def test_packages_publish_their_folder_through_the_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def dist(name: str, entry: str) -> None:
        info = tmp_path / f"{name.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[hivemesh.workflows]\nflows = {entry}\n")

    (tmp_path / "good_flows" / "inner").mkdir(parents=True)
    (tmp_path / "good_flows" / "__init__.py").write_text("")
    (tmp_path / "good_flows" / "inner" / "__init__.py").write_text("")
    (tmp_path / "good_flows" / "inner" / "a.yaml").write_text("x")
    dist("good-flows", "good_flows.inner")
    dist("attr-flows", "good_flows:thing")
    dist("gone-flows", "no_such_package_here")
    monkeypatch.syspath_prepend(str(tmp_path))
    files, problems = workflow_files([tmp_path / "none"], max_files=10)
    ours = [(f.path, f.source) for f in files if f.path.is_relative_to(tmp_path)]
    assert ours == [(tmp_path / "good_flows" / "inner" / "a.yaml", "package:good-flows")]
    said = {
        p.source.split(" ")[0]: p.error
        for p in problems
        if p.source.startswith(("package:attr-flows", "package:gone-flows"))
    }
    assert said == {
        "package:attr-flows": "the value must name a package, not 'module:attr'",
        "package:gone-flows": "no package 'no_such_package_here' is installed",
    }


def test_sub_workflow_checks_are_linear_in_a_deep_or_shared_registry():
    deep = WorkflowRegistry()
    for i in range(3000):  # w0 -> w1 -> ... -> w2999: deeper than Python's recursion limit
        leaf = "  - name: s\n    tool: text.upper\n"
        step = f"  - name: s\n    workflow: w{i + 1}\n" if i < 2999 else leaf
        spec = parse_workflow(f"id: w{i}\nsteps:\n{step}")
        deep.workflows[spec.id] = Registered(spec, "f", "f")
    deep.check_sub_workflows(deep.workflows["w0"].spec)
    back = parse_workflow("id: w2999\nsteps: [{name: s, workflow: w0}]\n")
    with pytest.raises(WorkflowDefinitionError, match="makes workflow 'w2999' run itself"):
        deep.check_sub_workflows(back)
    lattice = WorkflowRegistry()  # d0 -> (d1, d1'), each -> d2 ...: 2**40 paths, 80 workflows
    for i in range(40):
        steps = "steps: [{name: s, tool: text.upper}]\n"
        if i < 39:
            steps = f"steps: [{{name: a, workflow: d{i + 1}}}, {{name: b, workflow: e{i + 1}}}]\n"
        for prefix in "de":
            spec = parse_workflow(f"id: {prefix}{i}\n{steps}")
            lattice.workflows[spec.id] = Registered(spec, "f", "f")
    lattice.check_sub_workflows(parse_workflow("id: top\nsteps: [{name: s, workflow: d0}]\n"))


def test_the_workflows_answer_fits_a_frame():
    from node.config import NetworkConfig
    from node.control import ControlService
    from protocols import control
    from protocols.framing import encode_frame
    from protocols.versioning import dump_for

    registry = registry_of(*(f"id: w{i:03d}\n" + STEP for i in range(200)))
    for i in range(300):
        registry.problem(f"/w/bad{i}.yaml", "x" * 5000)  # (cut to 1000 characters)
    service = object.__new__(ControlService)  # (only what the answer needs)
    service.registered = registry
    service.network = NetworkConfig(max_frame_size=16 * 1024)
    answer = service._registered()
    assert 0 < len(answer.workflows) < 200
    assert answer.workflows_dropped == 200 - len(answer.workflows)
    assert 0 < len(answer.problems) < 300
    assert answer.problems_dropped == 300 - len(answer.problems)
    assert len(answer.problems[0].error) == 1000
    encode_frame(dump_for(answer, "0.5.0"), 16 * 1024)  # (raises if over the limit)
    assert control.RESPONSE_CODEC.decode(dump_for(answer, "0.5.0")) == answer
