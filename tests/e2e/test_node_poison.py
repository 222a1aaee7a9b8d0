"""End to end: what one workflow may do to a real ``hivemesh node start`` process.

- A node killed (SIGKILL, its Ray with it) while it resumes a workflow, again and again,
  does not crash-loop: after ``workflows.max_resume_attempts`` such deaths the next start
  marks the workflow QUARANTINED instead of resuming it, and ``hivemesh list``/``status``
  say so; ``hivemesh resume`` runs it by hand and ``hivemesh delete`` removes one.
- A step whose output is 100 MB fails with an error naming the limit and the size; the
  node's memory and its journal do not grow by anything like it.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from node.client import call
from node.home import Home
from node.localswarm import LocalSwarm, NodeProcess
from protocols import control

pytestmark = pytest.mark.e2e

NAP_S = 12
NAPPER = f"""\
id: napper
steps:
  - name: nap
    tool: util.sleep
    inputs: [{{name: seconds, value: {NAP_S}}}]
outputs: [{{name: slept, value: '{{{{steps.nap.outputs.result}}}}'}}]
"""
HUGE = """\
id: huge
steps:
  - name: fill
    tool: util.fill
    inputs: [{name: size, value: 100000000}]
outputs: [{name: text, value: '{{steps.fill.outputs.result}}'}]
"""


def _journal(home: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the node's journal while it runs (a read-only connection of its own)."""
    db = sqlite3.connect(f"file:{home / 'workflows.db'}?mode=ro", uri=True, timeout=10)
    try:
        return list(db.execute(sql, args))
    finally:
        db.close()


def _attempts(home: Path) -> dict[str, int]:
    try:
        rows = _journal(home, "SELECT workflow_id, resume_attempts FROM wf")
    except sqlite3.OperationalError:  # not created yet, or busy being created
        return {}
    return {wid: n for wid, n in rows}


def _wait(predicate: Any, timeout_s: float, what: str, node: NodeProcess | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if node is not None and not node.alive():
            pytest.fail(f"node {node.name} exited while waiting for {what}:\n{node.log_tail()}")
        time.sleep(0.05)
    tail = node.log_tail() if node is not None else ""
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}\n{tail}")


def _cli_json(local: LocalSwarm, *args: str) -> Any:
    out = local.cli(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.timeout(420)  # about 80 s: five node starts; each wait is bounded on its own
def test_a_node_killed_while_resuming_workflows_quarantines_them_instead_of_crash_looping(
    tmp_path: Path,
) -> None:
    limit = 2  # workflows.max_resume_attempts, lowered to save two node starts
    env = {"HIVEMESH_WORKFLOWS__MAX_RESUME_ATTEMPTS": str(limit)}
    with LocalSwarm(tmp_path / "swarm", num_cpus=1, env=env) as local:
        node = local.wait_ready(local.start("n0", "all"))
        home = node.home
        ids = ["napper-1", "napper-2"]
        for wid in ids:  # the control client in-process: both start within milliseconds
            request = control.SubmitRequest(workflow=NAPPER, workflow_id=wid)
            assert call(Home(home), None, request).created

        def napping() -> bool:
            rows = _journal(home, "SELECT workflow_id FROM task WHERE status = 'RUNNING'")
            return {r[0] for r in rows} == set(ids)

        _wait(napping, 60, "both steps to run", node)
        node.stop(signal.SIGKILL)
        # each start resumes both; each is killed as soon as it has counted the resumes
        for death in range(1, limit + 1):
            node = local.start(f"n{death}", "all", home=home)
            _wait(
                lambda n=death: _attempts(home) == {wid: n for wid in ids},
                120,
                f"resume number {death}",
                node,
            )
            node.stop(signal.SIGKILL)
        assert _journal(home, "SELECT count(*) FROM wf WHERE quarantine IS NOT NULL") == [(0,)]
        placed = _journal(home, "SELECT workflow_id, attempts FROM task ORDER BY workflow_id")

        node = local.wait_ready(local.start("last", "all", home=home))
        listed = _cli_json(local, "list", "--home", str(home))
        assert {w["workflow_id"]: w["status"] for w in listed} == dict.fromkeys(ids, "QUARANTINED")
        status = _cli_json(local, "status", "napper-2", "--home", str(home))
        assert status["status"] == "QUARANTINED"
        assert f"resumed {limit} times in a row" in status["error"]
        res = local.cli("result", "napper-2", "--home", str(home))
        assert res.returncode == 1
        [line] = res.stderr.strip().splitlines()
        assert line.startswith("error: workflow napper-2 is QUARANTINED (it was resumed ")
        assert line.endswith(
            "'hivemesh resume napper-2' if it is safe, or 'hivemesh delete napper-2'"
        )
        assert "'napper-2' is QUARANTINED (not resumed on its own)" in node.log_tail(200)
        # not resumed: no step was started again at this start
        assert _journal(home, "SELECT workflow_id, attempts FROM task ORDER BY workflow_id") == (
            placed
        )
        assert node.alive()

        # by hand: resume one (to its end), delete the other
        out = local.cli("resume", "napper-1", "--home", str(home))
        assert out.returncode == 0 and "RUNNING" in out.stdout, out.stderr
        busy = local.cli("delete", "napper-1", "--home", str(home))
        assert busy.returncode == 1
        assert busy.stderr.strip().splitlines() == [
            "error: cannot delete workflow 'napper-1': it is still running or pending"
        ]
        result = _cli_json(local, "result", "napper-1", "--wait", "--home", str(home))
        assert result == {"slept": float(NAP_S)}
        gone = local.cli("delete", "napper-2", "--home", str(home))
        assert gone.returncode == 0, gone.stderr
        assert gone.stdout.strip() == "workflow napper-2 deleted (it was QUARANTINED)"
        listed = _cli_json(local, "list", "--home", str(home))
        assert [(w["workflow_id"], w["status"]) for w in listed] == [("napper-1", "SUCCESSFUL")]
        missing = local.cli("status", "napper-2", "--home", str(home))
        assert missing.returncode == 1 and "no workflow with id 'napper-2'" in missing.stderr
    assert _attempts(home) == {"napper-1": 0}


def _journal_bytes(home: Path) -> int:
    files = [home / "workflows.db", home / "workflows.db-wal", home / "workflows.db-shm"]
    files += [p for p in (home / "objects").rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files if p.exists())


class RssSampler:
    """The peak resident memory of a process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self._proc.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


@pytest.mark.timeout(240)
def test_a_100_mb_step_output_fails_cleanly_without_growing_the_node_or_its_journal(
    tmp_path: Path,
) -> None:
    wf = tmp_path / "huge.yaml"
    wf.write_text(HUGE)
    with LocalSwarm(tmp_path / "swarm", num_cpus=1) as local:
        node = local.wait_ready(local.start("solo", "all"))
        home = str(node.home)
        # a small run first, so that what any first run allocates is in the baseline
        small = tmp_path / "small.yaml"
        small.write_text(HUGE.replace("100000000", "1000"))
        out = local.cli("submit", str(small), "--home", home, "--wait", "--json")
        assert out.returncode == 0, out.stderr
        before_rss = psutil.Process(node.proc.pid).memory_info().rss
        before_journal = _journal_bytes(node.home)

        sampler = RssSampler(node.proc.pid)
        out = local.cli("submit", str(wf), "--home", home, "--id", "huge-1", "--wait", "--json")
        peak = sampler.stop()
        assert out.returncode == 1
        result = json.loads(out.stdout)
        assert result["status"] == "FAILED"
        assert result["error"] == (
            "step 'fill' failed: the output of tool 'util.fill' is 100000013 bytes, over the "
            "limit of 8388608 bytes (max_step_output_bytes): return less, or raise the limit"
        )
        grown_journal = _journal_bytes(node.home) - before_journal
        grown_rss = peak - before_rss
        print(  # the figures, for the record (pytest -s)
            f"node RSS {before_rss / 2**20:.1f} MiB -> peak {peak / 2**20:.1f} MiB "
            f"(+{grown_rss / 2**20:.1f} MiB); journal +{grown_journal} bytes"
        )
        # the 100 MB never reached the node: its memory and its journal grew by far less
        assert grown_rss < 40 * 2**20
        assert grown_journal < 1024 * 1024
        assert node.alive()
