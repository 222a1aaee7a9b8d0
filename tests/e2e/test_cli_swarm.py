"""End to end: three real ``hivemesh node start`` processes (each with its own Ray),
driven through the CLI exactly as a user would."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.localswarm import LocalSwarm, NodeProcess
from node.scheduler import short

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "workflows" / "examples" / "text_math.yaml"


class Swarm:
    def __init__(
        self, local: LocalSwarm, text: NodeProcess, math: NodeProcess, none: NodeProcess
    ) -> None:
        self.local, self.text, self.math, self.none = local, text, math, none


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    root = tmp_path_factory.mktemp("swarm")
    with LocalSwarm(root, num_cpus=1) as local:  # stops every process, pass or fail
        text = local.wait_ready(local.start("text", "text"))
        math = local.start("math", "math", bootstrap=[text.addr])
        none = local.start("none", "none", bootstrap=[text.addr])
        local.wait_ready(math)
        local.wait_ready(none)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = local.cli("tools", "--home", str(none.home), "--json")
            if out.returncode == 0 and {"text.upper", "math.multiply"} <= {
                t["name"] for t in json.loads(out.stdout)
            }:
                break
            time.sleep(0.3)
        else:
            pytest.fail("node 'none' never learned the swarm's tools")
        yield Swarm(local, text, math, none)
    for node in local.nodes:
        assert not node.alive(), f"{node.name} still running"


def test_workflow_submitted_to_toolless_node_runs_where_the_tools_are(swarm: Swarm) -> None:
    home = str(swarm.none.home)
    out = swarm.local.cli(
        "submit",
        str(EXAMPLE),
        "--home",
        home,
        "--wait",
        "--json",
        "--input",
        "text=hello peer to peer swarm",
        "--input",
        "factor=10",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["status"] == "SUCCESSFUL"
    assert result["outputs"] == {
        "shouted": "HELLO PEER TO PEER SWARM",
        "words": 5,
        "scaled": 50,
        "reversed": "MRAWS REEP OT REEP OLLEH",
    }
    status = swarm.local.cli("status", result["workflow_id"], "--home", home, "--json")
    assert status.returncode == 0, status.stderr
    steps = {s["name"]: s for s in json.loads(status.stdout)["steps"]}
    assert {n: s["node"] for n, s in steps.items()} == {
        "shout": swarm.text.peer_id,
        "count": swarm.text.peer_id,
        "scaled": swarm.math.peer_id,
        "reversed": swarm.text.peer_id,
    }
    assert all(s["status"] == "SUCCESSFUL" and s["reason"] for s in steps.values())
    # every step ran on a peer: each has the receipt that peer signed, as none checked it
    for name, s in steps.items():
        receipt = s["receipt"]
        assert receipt["delegatee"] == s["node"] and receipt["delegator"] == swarm.none.peer_id
        assert receipt["tool"] == s["tool"] and receipt["handoff_id"].startswith(
            f"{result['workflow_id']}/{name}@"
        )
    explained = swarm.local.cli("status", result["workflow_id"], "--home", home, "--explain")
    assert explained.stdout.count("receipt: signed by") == 4
    # and the candidates each placement considered, the chosen one (where it ran) first
    tables = [line.split() for line in explained.stdout.splitlines()]
    chosen = [row[0] for row in tables if row and row[-1] == "chosen"]
    assert chosen == [short(s["node"]) for s in steps.values()]  # (in the steps' order)
    # nothing of a peer's is left running on text; nothing to cancel there
    text_home = str(swarm.text.home)
    running = swarm.local.cli("handoffs", "--home", text_home, "--json")
    assert running.returncode == 0 and json.loads(running.stdout) == [], running.stderr
    gone = swarm.local.cli("handoffs", "--home", text_home, "cancel", "nope")
    assert gone.returncode == 1 and gone.stderr.startswith("error: no handoff 'nope'")

    res = swarm.local.cli("result", result["workflow_id"], "--home", home, "--json")
    assert json.loads(res.stdout) == result["outputs"]
    listed = json.loads(swarm.local.cli("list", "--home", home, "--json").stdout)
    assert result["workflow_id"] in {w["workflow_id"] for w in listed}

    # the same request through --node instead of --home
    info = json.loads(swarm.local.cli("node", "info", "--home", home, "--json").stdout)
    assert info["peer_id"] == swarm.none.peer_id and info["tools"] == []
    assert info["ray"]["joined"] is False  # a Ray of its own, on loopback
    assert info["ray"]["address"].startswith("127.0.0.1:") and info["ray"]["cpus"] >= 1
    peers = json.loads(swarm.local.cli("peers", "--home", home, "--json").stdout)
    assert {p["peer_id"] for p in peers} == {swarm.text.peer_id, swarm.math.peer_id}
    # what each peer did for this node: the evidence placement goes by
    by_id = {p["peer_id"]: p for p in peers}
    assert by_id[swarm.text.peer_id]["evidence"]["done"] == 3  # shout, count, reversed
    assert by_id[swarm.math.peer_id]["evidence"]["done"] == 1
    assert all(p["evidence"]["failed"] == 0 and p["excluded"] is None for p in peers)
    human = swarm.local.cli("peers", "--home", home).stdout
    assert "record:   3 step(s) done for this node, 0 failed" in human
    assert "EXCLUDED" not in human


def test_submit_wait_and_watch_show_each_step_as_it_goes(swarm: Swarm) -> None:
    """Not a terminal: one plain line per event, the workflow's end, then the result; the
    same from ``watch`` afterwards, and JSON lines with ``--json``."""
    home = str(swarm.none.home)
    args = ["--input", "text=live progress", "--input", "factor=2"]
    out = swarm.local.cli("submit", str(EXAMPLE), "--home", home, "--id", "live-1", "--wait", *args)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("watching live-1 (Text and math): "), lines
    assert lines[0].endswith(", 4 step(s)"), lines
    end = lines.index("workflow live-1 SUCCESSFUL")  # the watch's last line, then the outputs
    assert lines.count("workflow live-1 SUCCESSFUL") == 1 and "  words = 2" in lines[end + 1 :]
    progress = lines[1:end]
    for step in ("shout", "count", "scaled", "reversed"):
        mine = [line.split()[1] for line in progress if line.split()[:1] == [step]]
        assert mine[-3:] == ["placed", "running", "finished"], (step, lines)
    placed = next(line for line in progress if line.split()[:2] == ["scaled", "placed"])
    assert "remote" in placed, placed

    watched = swarm.local.cli("watch", "live-1", "--home", home)
    assert watched.returncode == 0, watched.stderr
    again = watched.stdout.splitlines()
    assert again[-1] == "workflow live-1 SUCCESSFUL"
    assert [x for x in again if x.split()[:1] == ["scaled"]] == [
        x for x in progress if x.split()[:1] == ["scaled"]
    ]
    as_json = swarm.local.cli("watch", "live-1", "--home", home, "--json")
    frames = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert frames[0]["type"] == "watching" and frames[0]["status"] == "SUCCESSFUL"
    assert [f["seq"] for f in frames[1:]] == list(range(1, len(frames)))
    assert (frames[-1]["kind"], frames[-1]["status"]) == ("workflow_finished", "SUCCESSFUL")
    unknown = swarm.local.cli("watch", "no-such-workflow", "--home", home)
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: ")


def test_unknown_tool_fails_naming_it(swarm: Swarm, tmp_path: Path) -> None:
    wf = tmp_path / "unknown.yaml"
    wf.write_text(
        "id: unknown-tool\nsteps:\n  - name: x\n    tool: image.resize\n"
        "    inputs: [{name: path, value: a.png}]\n"
        # no node offers it: the step waits this long for one to appear (default 300 s)
        "    wait_for_provider: 2s\n"
    )
    out = swarm.local.cli("submit", str(wf), "--home", str(swarm.none.home), "--wait")
    assert out.returncode != 0
    assert "image.resize" in out.stderr and "Traceback" not in out.stderr
    assert "waited 2s for a node offering it to appear" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_validate_checks_steps_against_the_swarms_tools(swarm: Swarm, tmp_path: Path) -> None:
    # the swarm offers text.* and math.* (not util.*, installed here all the same)
    wf = tmp_path / "mixed.yaml"
    wf.write_text(
        "id: mixed\nsteps:\n"
        "  - name: add\n    tool: math.add\n"
        "    inputs: [{name: a, value: x}, {name: b, value: 1}]\n"
        "  - name: echo\n    tool: util.echo\n    inputs: [{name: value, value: 1}]\n"
    )
    home = str(swarm.none.home)
    out = swarm.local.cli("validate", str(wf), "--home", home)
    assert out.returncode == 1, out.stderr
    assert out.stderr == "note: tools checked against the swarm's\n"
    assert out.stdout.splitlines() == [
        f"{wf}:5:31: error: step 'add' passes a string ('x') as input 'a' of tool 'math.add', "
        "which expects an integer or a number",
        f"{wf}:7:11: error: step 'echo' uses unknown tool 'util.echo': not installed or not "
        "enabled on any node of the swarm (enabled tools: math.add, math.multiply, "
        "math.sum_list, text.lower, text.reverse, text.upper, text.word_count)",
    ]
    local = swarm.local.cli("validate", str(wf), "--home", home, "--local")
    assert local.returncode == 1 and "util.echo" not in local.stdout
    assert "--local" in local.stderr


def test_user_errors_are_one_line(swarm: Swarm, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: broken\nsteps:\n  - name: a\n    tool: text.upper\n    inputs: [\n")
    home = str(swarm.none.home)
    for args in (
        ["submit", str(bad), "--home", home],
        ["status", "no-such-workflow", "--home", home],
        ["node", "info", "--node", f"/ip4/127.0.0.1/tcp/9/p2p/{swarm.text.peer_id}"],
    ):
        out = swarm.local.cli(*args)
        assert out.returncode == 1, args
        assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    assert "bad.yaml:" in swarm.local.cli("submit", str(bad), "--home", home).stderr


def test_sigterm_stops_cleanly_and_a_restarted_node_still_answers(swarm: Swarm) -> None:
    home = str(swarm.none.home)
    out = swarm.local.cli("submit", str(EXAMPLE), "--home", home, "--wait", "--json")
    wid = json.loads(out.stdout)["workflow_id"]

    started = time.monotonic()
    code = swarm.none.stop(signal.SIGTERM, timeout_s=30)
    assert code == 0, swarm.none.log_tail()
    assert time.monotonic() - started < 15
    assert not (swarm.none.home / "node.json").exists()
    assert "node stopped" in swarm.none.log_tail()

    again = swarm.local.wait_ready(swarm.local.start("none-again", "none", home=swarm.none.home))
    assert again.peer_id == swarm.none.peer_id  # persisted identity
    res = swarm.local.cli("result", wid, "--home", home, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["words"] == 9
    st = json.loads(swarm.local.cli("status", wid, "--home", home, "--json").stdout)
    assert st["status"] == "SUCCESSFUL"
    assert {s["node"] for s in st["steps"]} == {swarm.text.peer_id, swarm.math.peer_id}


def test_node_killed_mid_workflow_resumes_without_rerunning_finished_steps(
    tmp_path: Path,
) -> None:
    wf = tmp_path / "slow.yaml"
    wf.write_text(
        "id: slow\n"
        "steps:\n"
        "  - name: first\n    tool: text.upper\n"
        "    inputs: [{name: text, value: durable}]\n"
        "  - name: nap\n    tool: util.sleep\n"
        "    inputs: [{name: seconds, value: 10}]\n"
        "  - name: last\n    tool: text.lower\n"
        "    inputs: [{name: text, value: '{{steps.first.outputs.result}} after "
        "{{steps.nap.outputs.result}}'}]\n"
        "outputs: [{name: out, value: '{{steps.last.outputs.result}}'}]\n"
    )
    # two CPUs: 'first' and 'nap' are independent and must not queue behind each other
    with LocalSwarm(tmp_path / "solo", num_cpus=2) as local:
        node = local.wait_ready(local.start("solo", "all"))
        home = str(node.home)
        out = local.cli("submit", str(wf), "--home", home, "--id", "slow-1", "--json")
        assert out.returncode == 0, out.stderr
        from node.client import call
        from node.home import Home
        from protocols import control

        seen = []
        started = time.monotonic()
        while time.monotonic() - started < 60:
            # the control client in-process: a poll costs milliseconds, not a CLI start-up
            st = call(Home(node.home), None, control.StatusRequest(workflow_id="slow-1"))
            states = {s.name: s.status for s in st.steps}
            seen.append((round(time.monotonic() - started, 2), st.status, states))
            if states["first"] == "SUCCESSFUL" and states["nap"] == "RUNNING":
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"workflow never reached the sleeping step: {seen}")
        node.stop(signal.SIGKILL)

        again = local.wait_ready(local.start("solo-again", "all", home=node.home))
        res = local.cli("result", "slow-1", "--home", str(again.home), "--wait", "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout) == {"out": "durable after 10.0"}
        st = json.loads(local.cli("status", "slow-1", "--home", home, "--json").stdout)
        attempts = {s["name"]: s for s in st["steps"]}
    # the journal shows the finished step ran once and the interrupted one twice
    from workflows.engine.storage import Storage

    storage = Storage(node.home)
    steps = {t.task_id: t.attempts for t in storage.list_tasks("slow-1")}
    steps.pop("__outputs__", None)
    storage.close()
    assert steps == {"first": 1, "nap": 2, "last": 1}, (steps, attempts)
