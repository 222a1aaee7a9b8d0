"""What the engine keeps in Ray, on the session's Ray.

The bound on tasks in Ray (``MAX_INFLIGHT_TASKS``): ready steps beyond it wait in the engine,
oldest first, and go to Ray as submitted ones finish; steps blocked on held work get more
let through; a canceled workflow's held steps never start. Small outputs
(``INLINE_OUTPUT_BYTES``): kept as values once committed, their ObjectRefs let go, handed to
readers as values at the top level and as ObjectRefs when nested, as before."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray

import workflows as workflow
from tests.integration import engine_helpers as h
from workflows import api as wf_api

pytestmark = pytest.mark.usefixtures("ray_cluster")


@ray.remote
def total(*values: int) -> int:
    return sum(values)


@ray.remote
def slow_inc(x: int, runs: str) -> int:
    h.append_line(runs, str(x))
    time.sleep(0.02)
    return x + 1


@ray.remote(num_cpus=0.1)
def waits_for(path: str, value: int) -> int:
    deadline = time.monotonic() + 60
    while not Path(path).exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)
    return value


@ray.remote(num_cpus=0.1)
def creates(path: str, value: int) -> int:
    h.touch(path)
    return value


class Sampler:
    """Samples, on the engine's thread, how many tasks it has in Ray and how many it holds."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.submitted: list[int] = []
        self.held: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, int]:
        return self.engine._count_submitted(), len(self.engine._held)

    def _run(self) -> None:
        while not self._stop.is_set():
            submitted, held = self.engine.call(self._sample)
            self.submitted.append(submitted)
            self.held.append(held)
            time.sleep(0.002)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_a_fan_out_wider_than_the_bound_never_has_more_tasks_in_ray(
    wf_storage: Path, tmp_path: Path
) -> None:
    engine = wf_api._engine()
    engine.max_inflight_tasks = 5
    engine.held_stall_s = 3600  # the session's Ray has idle CPUs to spare: not asked here
    runs = tmp_path / "runs"
    branches = [slow_inc.bind(i, str(runs)) for i in range(40)]
    with Sampler(engine) as sampler:
        out = workflow.run(total.bind(*branches), workflow_id="wide")
    assert out == sum(i + 1 for i in range(40))
    assert sorted(int(x) for x in h.read_lines(runs)) == list(range(40))  # each once
    assert max(sampler.held) > 0  # steps did wait in the engine
    # the branches at most 5 at a time; the sum may be submitted early (pipelined, with
    # the branches' ObjectRefs) once the last branch is
    assert max(sampler.submitted) <= 5 + 1
    assert engine.call(lambda: len(engine._held)) == 0
    meta = workflow.get_metadata("wide")
    assert meta["status"] == "SUCCESSFUL"


def test_held_steps_go_to_ray_in_the_order_they_became_ready_across_workflows(
    wf_storage: Path, tmp_path: Path
) -> None:
    # room for one task: the first workflow's steps are held before the second's, so all of
    # them run first (a later workflow does not overtake, as in Ray's own queue)
    engine = wf_api._engine()
    engine.max_inflight_tasks = 1
    engine.held_stall_s = 3600  # the session's Ray has idle CPUs to spare: not asked here
    order = tmp_path / "order"
    release = tmp_path / "release"
    # a workflow whose one step takes the one place until released
    gate = workflow.run_async(h.wait_for_file.bind(str(release), 0), workflow_id="gate")
    h.wait_until(lambda: engine.call(engine._count_submitted) == 1, what="the gate in Ray")
    first = [h.record.bind(str(order), "first") for _ in range(6)]
    ref1 = workflow.run_async(total_len.bind(*first), workflow_id="first")
    h.wait_until(lambda: engine.call(lambda: len(engine._held)) == 6, what="6 steps held")
    second = [h.record.bind(str(order), "second") for _ in range(3)]
    ref2 = workflow.run_async(total_len.bind(*second), workflow_id="second")
    h.wait_until(lambda: engine.call(lambda: len(engine._held)) == 9, what="9 steps held")
    h.touch(release)
    assert ray.get(gate, timeout=60) == 0
    assert ray.get(ref1, timeout=60) == 6 * len("first")
    assert ray.get(ref2, timeout=60) == 3 * len("second")
    assert h.read_lines(order) == ["first"] * 6 + ["second"] * 3


@ray.remote
def total_len(*values: Any) -> int:
    return sum(len(v) for v in values if isinstance(v, str))


def test_steps_blocked_on_held_work_get_more_let_through(
    wf_storage: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # two steps wait for a file that only the third step creates: with room for two in Ray
    # the third is held behind them, and nothing finishes; Ray has idle CPUs (the waiting
    # steps take a tenth of one each), so within HELD_STALL_S the engine lets more through
    engine = wf_api._engine()
    engine.max_inflight_tasks = 2
    flag = str(tmp_path / "flag")
    caplog.set_level(logging.INFO, logger="workflows.engine.execution")
    started = time.monotonic()
    waiting = workflow.run_async(
        total.bind(waits_for.bind(flag, 1), waits_for.bind(flag, 2)), workflow_id="waiting"
    )
    # (and the sum, pipelined: submitted with their ObjectRefs)
    h.wait_until(lambda: engine.call(engine._count_submitted) >= 2, what="both waiting in Ray")
    assert workflow.run(creates.bind(flag, 3), workflow_id="creator") == 3
    assert ray.get(waiting, timeout=60) == 3
    assert time.monotonic() - started < 30
    assert any("idle CPUs; submitting" in r.getMessage() for r in caplog.records)
    assert engine.call(lambda: (len(engine._held), engine._relief)) == (0, 0)


def test_a_canceled_workflows_held_steps_never_start(wf_storage: Path, tmp_path: Path) -> None:
    engine = wf_api._engine()
    engine.max_inflight_tasks = 2
    engine.held_stall_s = 3600  # the session's Ray has idle CPUs to spare: not asked here
    release = tmp_path / "release"
    runs = tmp_path / "runs"
    blockers = [h.wait_for_file.bind(str(release), i, str(runs)) for i in range(6)]
    ref = workflow.run_async(total.bind(*blockers), workflow_id="victim")
    h.wait_until(lambda: engine.call(lambda: len(engine._held)) == 4, what="4 steps held")
    workflow.cancel("victim")
    with pytest.raises(workflow.WorkflowCancellationError):
        ray.get(ref, timeout=60)
    assert engine.call(lambda: len(engine._held)) == 0
    h.touch(release)
    # another workflow runs at once: the canceled one's held steps took no room
    assert workflow.run(total.bind(h.identity.bind(1), h.identity.bind(2)), workflow_id="next") == 3
    time.sleep(0.5)
    # only the two that were in Ray may have run (a canceled task may never have started)
    assert h.count_lines(runs) <= 2


@ray.remote
def small(i: int) -> int:
    return i


@ray.remote
def big(i: int) -> str:
    return str(i) * 1000  # (over INLINE_OUTPUT_BYTES)


@ray.remote
def describe(top: Any, nested: list[Any]) -> tuple[str, Any, str, Any]:
    inner = nested[0]
    return (
        type(top).__name__,
        top,
        type(inner).__name__,
        ray.get(inner) if isinstance(inner, ray.ObjectRef) else inner,
    )


def test_committed_small_outputs_are_kept_as_values_and_their_refs_let_go(
    wf_storage: Path, tmp_path: Path
) -> None:
    engine = wf_api._engine()
    release = tmp_path / "release"
    gate = h.wait_for_file.options(**workflow.options(task_id="gate")).bind(str(release), 0)
    smalls = [small.options(**workflow.options(task_id=f"s{i}")).bind(i) for i in range(10)]
    bigs = [big.options(**workflow.options(task_id=f"b{i}")).bind(i) for i in range(3)]
    ref = workflow.run_async(total_len.bind(gate, *smalls, *bigs), workflow_id="kept")

    def held() -> dict[str, tuple[bool, bool, bool]]:
        run = engine._runs["kept"]
        return {
            tid: (t.state == "DONE", t.ref is None, t.inline)
            for tid, t in run.tasks.items()
            if tid[0] in "sb"
        }

    h.wait_until(lambda: all(done for done, _, _ in engine.call(held).values()), what="done")
    state = engine.call(held)
    assert all(state[f"s{i}"] == (True, True, True) for i in range(10))  # value, no ref
    assert all(state[f"b{i}"][2] is False for i in range(3))  # big: not kept as a value
    h.touch(release)
    assert ray.get(ref, timeout=60) == sum(len(str(i) * 1000) for i in range(3))
    assert workflow.get_output("kept", task_id="s7") == 7  # (and in the journal)


def test_a_small_output_reaches_its_reader_as_a_value_at_the_top_and_a_ref_when_nested(
    wf_storage: Path,
) -> None:
    # a reader with a step output nested in a container is never pipelined: it starts after
    # `first` committed, when the engine holds `first` as a value and no ObjectRef of it
    first = small.options(**workflow.options(task_id="first")).bind(5)
    out = workflow.run(describe.bind(first, [first]), workflow_id="shapes")
    assert out == ("int", 5, "ObjectRef", 5)  # as Ray hands a task its arguments
