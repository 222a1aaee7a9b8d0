"""End to end, cluster mode: a real ``hivemesh node start --ray-address`` process joins a
Ray cluster started separately (``ray start --head`` on loopback) instead of starting its
own Ray, and runs a workflow submitted with the CLI on it."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from node.localswarm import LocalSwarm
from tests.integration.harness import RayHead, ray_head

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "workflows" / "examples" / "word_stats.yaml"
RAY_DAEMONS = ("gcs_server", "raylet")


def _ray_daemons_under(pid: int) -> list[str]:
    """Names of Ray daemons among ``pid``'s descendants (a node's private Ray has them)."""
    names = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            name = " ".join(child.cmdline()) or child.name()
        except psutil.Error:
            continue
        if any(daemon in name for daemon in RAY_DAEMONS):
            names.append(name[:120])
    return names


def _job(head: RayHead, job_id: str) -> dict[str, Any]:
    return next(j for j in head.jobs() if j["JobID"] == job_id)


@pytest.mark.timeout(120)  # about 20 s; every wait inside is bounded on its own
def test_a_node_started_with_ray_address_runs_workflows_on_that_cluster(tmp_path: Path) -> None:
    """``hivemesh init`` + ``hivemesh node start --ray-address HEAD``, a workflow of built-in
    tools submitted with ``hivemesh submit --wait``; then proof that the node is a driver of
    the head's cluster (its job, its steps' workers) and has no Ray of its own."""
    with (
        ray_head(num_cpus=1, timeout_s=40) as head,
        LocalSwarm(tmp_path, env=head.env, extra_args=["--ray-address", head.address]) as local,
    ):
        home = tmp_path / "clustered"
        init = local.cli("init", "--home", str(home), timeout_s=30)
        assert init.returncode == 0, init.stderr
        node = local.wait_ready(local.start("clustered", "all", home=home), timeout_s=40)
        pid = node.proc.pid
        # the node says which Ray it runs on (its runtime record, and its start-up lines)
        ray_info = json.loads((home / "node.json").read_text())["ray"]
        assert ray_info["joined"] is True
        assert ray_info["address"] == head.address
        # ... and to a client that asks (control `info`)
        info = local.cli("node", "info", "--home", str(home), "--json", timeout_s=30)
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["ray"] == {
            "address": head.address,
            "joined": True,
            "cpus": ray_info["cpus"],
        }
        human = local.cli("node", "info", "--home", str(home), timeout_s=30)
        assert f"ray:     joined cluster at {head.address}" in human.stdout, human.stdout

        out = local.cli(
            "submit",
            str(EXAMPLE),
            "--home",
            str(home),
            "--wait",
            "--json",
            "--input",
            "title=Joined A Cluster",
            "--input",
            "body=one node and one head on loopback",
            timeout_s=40,
        )
        assert out.returncode == 0, out.stderr + node.log_tail()
        result = json.loads(out.stdout)
        assert result["status"] == "SUCCESSFUL", result
        assert result["outputs"] == {
            "title": "joined a cluster",
            "total": 10,
            "weighted": 13,
            "summary": "title: 3 words, body: 7 words",
        }
        status = json.loads(
            local.cli(
                "status", result["workflow_id"], "--home", str(home), "--json", timeout_s=30
            ).stdout
        )
        assert {s["node"] for s in status["steps"]} == {node.peer_id}  # ran here, not handed off

        # The node is a driver of the head's cluster, and it has no Ray of its own: with a
        # private Ray its pid would be in no job of the head, and gcs_server and raylet
        # would be its children.
        assert _ray_daemons_under(pid) == [], node.log_tail()
        jobs = [j for j in head.jobs() if j["DriverPid"] == pid]
        assert len(jobs) == 1, (pid, jobs)
        job_id = jobs[0]["JobID"]
        assert not jobs[0]["IsDead"]
        # the steps ran in workers of the head's raylet: a worker writes ":job_id:JOB" to its
        # log in the head's session folder when it starts a task of that job
        marker = f":job_id:{job_id}"
        worker_logs = list(head.temp_dir.glob("session_*/logs/worker-*.out"))
        assert any(marker in p.read_text(errors="replace") for p in worker_logs), worker_logs

        # SIGTERM: the node stops in time and leaves the cluster (its job ends) ...
        assert node.stop(signal.SIGTERM, timeout_s=20) == 0, node.log_tail()
        assert "node stopped" in node.log_tail()
        deadline = time.monotonic() + 15
        while not _job(head, job_id)["IsDead"]:  # the GCS may note the disconnect late
            assert time.monotonic() < deadline, "the node's job is still alive"
            time.sleep(0.5)
        # ... which keeps running without it
        assert head.processes()
    # stop_all killed the node's group, ray_head killed the head's and checked that nothing
    # of the cluster runs any more
    assert not node.alive()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
