"""Chaos run: hivemesh node processes on loopback running many workflows while nodes are
SIGKILLed and restarted (the node the workflows are submitted to included) and paused
(SIGSTOP, then SIGCONT).

Every node is a real ``hivemesh node start`` process with its own Ray, started as the CLI
starts it (node.localswarm), on a fixed loopback port so that a restarted node is found at
the address its peers know. The nodes offer the tools of ``scripts/chaos_tools.py`` (a tool
plugin installed for this run only): the node the workflows are submitted to offers ``cx``
only, so every workflow hands steps of ``cy`` and ``cz`` to its peers. Each workflow is

    a = cx(i)  ->  b = cy(a)  ->  c = cz(b)  ->  e = cx(c, d)      result e = 4(i + 1) + 8
              \\->  d = cy(a)  ----------------/

with step durations drawn from 0.05 s to 3 s. The tools record each execution, so that
the run can tell a step rerun after its result was committed (an execution that starts
after a step depending on it started, or after its workflow ended) from an execution
interrupted by a kill and run again (allowed: at-least-once).

It prints: submitted, completed, failed with a correct error (one naming the tool, e.g. a
provider wait that ran out), failed otherwise, lost (never finished, or unknown to the
node), steps rerun after their result was committed, wrong results, and the mean and p99
time from a SIGKILL to the restart of each step that was running on the killed node.
Exit status 1 if anything was lost, rerun after commit, wrong or failed with another error.

    .venv/bin/python scripts/chaos.py                       # 5 nodes, 200 workflows
    .venv/bin/python scripts/chaos.py --nodes 3 --workflows 10 --timeout-s 100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.errors import NodeError  # noqa: E402
from node.home import Home, peer_id_of  # noqa: E402
from node.localswarm import LocalSwarm, NodeProcess  # noqa: E402
from node.p2p import P2PHost  # noqa: E402
from node.swarmkey import SwarmKey  # noqa: E402
from protocols import control  # noqa: E402
from protocols.errors import PeerErrorResponse, ProtocolError  # noqa: E402
from protocols.stream import MessageStream  # noqa: E402

PLUGIN = "hivemesh_chaos_tools"
TOOLS = {"cx.step", "cy.step", "cz.step"}
# tool groups per node: the first (where workflows are submitted) lacks cy and cz
NODE_TOOLS = ["cx", "cx,cy", "cy,cz", "cz,cx", "cx,cy,cz"]
NODE_TOOLS_3 = ["cx", "cx,cy,cz", "cy,cz"]
DURATIONS = [0.05, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.5, 3.0]
TERMINAL = {"SUCCESSFUL", "FAILED", "CANCELED", "QUARANTINED"}
# a failure the swarm may honestly report under chaos names the tool it could not run
CORRECT_ERROR = re.compile(r"tool '(cx|cy|cz)\.step'")
# step -> the steps that use its output (they start only once its result is committed)
DEPENDENTS = {"a": ["b", "d"], "b": ["c"], "c": ["e"], "d": ["e"], "e": []}


def say(text: str = "") -> None:
    print(text, flush=True)


def workflow_yaml(i: int, rng: random.Random) -> str:
    def s() -> float:
        return rng.choice(DURATIONS)

    return f"""\
id: chaos-{i}
steps:
  - name: a
    tool: cx.step
    inputs: [{{name: x, value: {i}}}, {{name: seconds, value: {s()}}}]
  - name: b
    tool: cy.step
    inputs: [{{name: x, value: "{{{{steps.a.outputs.result}}}}"}}, {{name: seconds, value: {s()}}}]
  - name: c
    tool: cz.step
    inputs: [{{name: x, value: "{{{{steps.b.outputs.result}}}}"}}, {{name: seconds, value: {s()}}}]
  - name: d
    tool: cy.step
    inputs: [{{name: x, value: "{{{{steps.a.outputs.result}}}}"}}, {{name: seconds, value: {s()}}}]
  - name: e
    tool: cx.step
    inputs:
      - {{name: x, value: "{{{{steps.c.outputs.result}}}}"}}
      - {{name: y, value: "{{{{steps.d.outputs.result}}}}"}}
      - {{name: seconds, value: {s()}}}
outputs:
  - {{name: result, value: "{{{{steps.e.outputs.result}}}}"}}
"""


def expected(i: int) -> int:
    a = i + 1
    return (a * 2 + 7) + (a * 2) + 1


def install_plugin(folder: Path) -> None:
    """The chaos tools as an installed distribution in ``folder`` (put on PYTHONPATH)."""
    folder.mkdir(parents=True)
    shutil.copy(Path(__file__).with_name("chaos_tools.py"), folder / f"{PLUGIN}.py")
    info = folder / f"{PLUGIN}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN}\nVersion: 0.1\n")
    entries = "".join(f"{t} = {PLUGIN}:{t.replace('.', '_')}\n" for t in sorted(TOOLS))
    (info / "entry_points.txt").write_text(f"[hivemesh.tools]\n{entries}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Member:
    """One node of the run: a name, a fixed port, and its current process."""

    name: str
    tools: str
    port: int
    proc: NodeProcess | None = None
    peer_id: str = ""
    down_since: float | None = None
    paused: bool = False

    @property
    def addr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"


@dataclass
class Flow:
    index: int
    wid: str
    text: str
    submitted_at: float | None = None
    status: str | None = None
    ended_seen_at: float | None = None
    outputs: dict[str, Any] | None = None
    error: str | None = None
    result_known: bool = False


@dataclass
class Tally:
    kills: list[tuple[float, str]] = field(default_factory=list)  # (time, node name)
    pauses: int = 0
    restarts: int = 0
    client_errors: int = 0
    client_error_kinds: dict[str, int] = field(default_factory=dict)


class Chaos:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.rng = random.Random(args.seed)
        self.exec_dir = root / "exec"
        self.exec_dir.mkdir()
        plugin = root / "plugin"
        install_plugin(plugin)
        path = os.pathsep.join(
            p for p in (str(plugin), str(ROOT), os.environ.get("PYTHONPATH")) if p
        )
        self.env = {"PYTHONPATH": path, "CHAOS_EXEC_DIR": str(self.exec_dir)}
        self.swarm = LocalSwarm(root, num_cpus=1)
        layout = NODE_TOOLS_3 if args.nodes == 3 else NODE_TOOLS
        self.members = [
            Member(f"n{k}", layout[k % len(layout)], free_port()) for k in range(args.nodes)
        ]
        for m in self.members:  # identities first: every node knows every address at start
            home = Home(root / m.name)
            home.init_identity()
            m.peer_id = peer_id_of(home.load_node_key())
        self.flows = [
            Flow(i, f"chaos-{i}", workflow_yaml(i, self.rng)) for i in range(args.workflows)
        ]
        self.tally = Tally()
        self.starting = threading.Lock()
        self.stop_chaos = False

    # -- node processes (blocking: run in a thread) ---------------------------------------

    def start(self, m: Member) -> None:
        others = [o.addr for o in self.members if o is not m and o.peer_id]
        with self.starting:  # LocalSwarm.start reads these: one start at a time
            self.swarm.env = {**self.swarm.env, **self.env, "CHAOS_NODE": m.name}
            self.swarm.extra_args = ["--listen", f"/ip4/127.0.0.1/tcp/{m.port}"]
            proc = self.swarm.start(m.name, m.tools, bootstrap=others)
        self.swarm.wait_ready(proc, timeout_s=120)
        assert proc.peer_id == m.peer_id
        m.proc, m.down_since, m.paused = proc, None, False

    def kill(self, m: Member) -> None:
        assert m.proc is not None
        m.down_since = time.time()
        self.tally.kills.append((m.down_since, m.name))
        m.proc.kill_group()
        m.proc.proc.wait(30)
        m.paused = False

    def signal_group(self, m: Member, sig: int) -> None:
        assert m.proc is not None
        try:  # its Ray workers run in process groups of their own
            family = psutil.Process(m.proc.proc.pid).children(recursive=True)
        except psutil.Error:
            family = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(m.proc.proc.pid, sig)
        for child in family:
            with contextlib.suppress(psutil.Error):
                child.send_signal(sig)

    # -- the client ------------------------------------------------------------------------

    async def ask(self, host: P2PHost, message: Any, timeout_s: float = 10.0) -> Any:
        """One control request to the submit node over the client's connection (redialled
        when it broke): the answer, or None if the node could not be asked."""
        m = self.members[0]
        try:
            with trio.fail_after(timeout_s):
                if not host.is_connected(m.peer_id):
                    await host.connect_addr(m.addr)
                stream = await host.open_stream(m.peer_id, control.PROTOCOL_ID)
                ms = MessageStream(stream, control.RESPONSE_CODEC)
                try:
                    await ms.send(message)
                    return await ms.receive_within(timeout_s)
                finally:
                    with trio.move_on_after(1):
                        await ms.close()
        except (PeerErrorResponse, trio.TooSlowError, NodeError, ProtocolError, OSError) as exc:
            self.tally.client_errors += 1
            text = re.sub(r"12D3KooW\w+", "<peer>", f"{type(exc).__name__}: {exc}")[:160]
            self.tally.client_error_kinds[text] = self.tally.client_error_kinds.get(text, 0) + 1
        return None

    async def submitter(self, host: P2PHost) -> None:
        pending = list(self.flows)
        while pending:
            running = sum(
                1 for f in self.flows if f.submitted_at is not None and f.status not in TERMINAL
            )
            if running >= self.args.in_flight:
                await trio.sleep(0.2)
                continue
            flow = pending[0]
            reply = await self.ask(
                host, control.SubmitRequest(workflow=flow.text, workflow_id=flow.wid)
            )
            if isinstance(reply, control.Submitted):
                flow.submitted_at = time.time()
                pending.pop(0)
            else:
                await trio.sleep(0.5)  # the node is down or paused: submit again (idempotent)

    async def poller(self, host: P2PHost, done: trio.Event) -> None:
        while True:
            await trio.sleep(self.args.poll_s)
            reply = await self.ask(host, control.ListRequest())
            if not isinstance(reply, control.WorkflowList):
                continue
            now = time.time()
            by_id = {w.workflow_id: w.status for w in reply.workflows}
            for flow in self.flows:
                status = by_id.get(flow.wid)
                if status is None or flow.submitted_at is None:
                    continue
                flow.status = status
                if status in TERMINAL and flow.ended_seen_at is None:
                    flow.ended_seen_at = now
            for flow in self.flows:
                if flow.status in TERMINAL and not flow.result_known:
                    result = await self.ask(host, control.ResultRequest(workflow_id=flow.wid))
                    if isinstance(result, control.WorkflowResult):
                        flow.outputs, flow.error = result.outputs, result.error
                        flow.result_known = True
            if all(f.result_known for f in self.flows):
                done.set()
                return

    async def monkey(self) -> None:
        """Kill (and later restart) one random node at a time, the submit node included,
        and pause another now and then."""
        rng = self.rng
        lo, hi = self.args.interval_s

        async def pause_one() -> None:
            while not self.stop_chaos:
                await trio.sleep(rng.uniform(lo, hi) * 1.5)
                calm = [m for m in self.members if m.down_since is None and not m.paused]
                if self.stop_chaos or not calm:
                    continue
                m = rng.choice(calm)
                m.paused = True
                self.tally.pauses += 1
                self.signal_group(m, signal.SIGSTOP)
                await trio.sleep(rng.uniform(0.5, 4.0))
                self.signal_group(m, signal.SIGCONT)
                m.paused = False

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pause_one)
            first = True
            while not self.stop_chaos:
                # the first kill soon after the first steps start, so that even a short
                # run sees one mid-workflow
                await trio.sleep(rng.uniform(1.0, 2.0) if first else rng.uniform(lo, hi))
                first = False
                if self.stop_chaos:
                    break
                m = self.victim()
                await trio.to_thread.run_sync(self.kill, m)
                await trio.sleep(rng.uniform(0.5, 3.0))
                await trio.to_thread.run_sync(self.start, m)
                self.tally.restarts += 1
            nursery.cancel_scope.cancel()

    def victim(self) -> Member:
        """Who to kill: the submit node every third kill or so; else, preferably, a node
        running a step now (whose recovery is measured); never a paused one."""
        rng = self.rng
        up = [m for m in self.members if not m.paused]
        if self.members[0] in up and rng.random() < 0.34:
            return self.members[0]
        busy = {e["node"] for e in self.running_now()}
        return rng.choice([m for m in up if m.name in busy] or up)

    def running_now(self) -> list[dict[str, Any]]:
        """The last event of each step execution record, where it is a start."""
        out = []
        for path in self.exec_dir.glob("*.jsonl"):
            lines = path.read_text().splitlines()
            if lines:
                last = json.loads(lines[-1])
                if last["event"] == "start":
                    out.append(last)
        return out

    async def drive(self) -> None:
        async with trio.open_nursery() as starting:
            for m in self.members:
                starting.start_soon(trio.to_thread.run_sync, self.start, m)
        say(
            f"  {len(self.members)} nodes up: "
            + ", ".join(f"{m.name} [{m.tools}]" for m in self.members)
        )
        key = Home(self.members[0].proc.home).load_client_key()  # type: ignore[union-attr]
        host = P2PHost(key, swarm_key=SwarmKey.load(self.swarm.swarm_key_file), dial_timeout_s=3.0)
        started = time.monotonic()
        done = trio.Event()
        async with host.run(["/ip4/127.0.0.1/tcp/0"]), trio.open_nursery() as nursery:
            nursery.start_soon(self.submitter, host)
            nursery.start_soon(self.poller, host, done)
            chaos = trio.CancelScope()
            calm = trio.Event()

            async def run_monkey() -> None:
                with chaos:
                    await self.monkey()
                calm.set()

            nursery.start_soon(run_monkey)
            with trio.move_on_after(self.args.timeout_s - self.args.drain_s):
                await done.wait()
            # calm: every node up and running, then let what is left finish (a restart
            # under way in a thread finishes first)
            self.stop_chaos = True
            chaos.cancel()
            await calm.wait()
            for m in self.members:
                if m.paused:
                    self.signal_group(m, signal.SIGCONT)
                    m.paused = False
                if m.proc is None or not m.proc.alive():
                    await trio.to_thread.run_sync(self.start, m)
                    self.tally.restarts += 1
            say(f"  chaos over after {time.monotonic() - started:.0f}s; draining")
            with trio.move_on_after(self.args.drain_s):
                await done.wait()
            nursery.cancel_scope.cancel()
        self.elapsed = time.monotonic() - started

    # -- the verdict -----------------------------------------------------------------------

    def executions(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for path in self.exec_dir.glob("*.jsonl"):
            for line in path.read_text().splitlines():
                if line.strip():
                    event = json.loads(line)
                    out.setdefault(event["key"], []).append(event)
        for events in out.values():
            events.sort(key=lambda e: e["t"])
        return out

    def report(self) -> int:
        runs = self.executions()
        submitted = [f for f in self.flows if f.submitted_at is not None]
        completed = wrong = failed_ok = failed_other = lost = 0
        problems: list[str] = []
        for f in self.flows:
            if not f.result_known:
                lost += 1
                problems.append(f"lost: {f.wid} (last status {f.status})")
            elif f.status == "SUCCESSFUL":
                got = (f.outputs or {}).get("result")
                if got == expected(f.index):
                    completed += 1
                else:
                    wrong += 1
                    problems.append(f"wrong: {f.wid} returned {got!r}, not {expected(f.index)}")
            elif f.status == "FAILED" and CORRECT_ERROR.search(f.error or ""):
                failed_ok += 1
                problems.append(f"failed (correct error): {f.wid}: {f.error}")
            else:
                failed_other += 1
                problems.append(f"failed ({f.status}): {f.wid}: {f.error}")
        reruns, again = self.reruns(runs)
        problems += [f"rerun after commit: {r}" for r in reruns]
        recoveries = self.recoveries(runs)
        say(
            f"  elapsed: {self.elapsed:.0f}s; kills: {len(self.tally.kills)}, pauses: "
            f"{self.tally.pauses}, restarts: {self.tally.restarts}; client requests that "
            f"found the submit node away: {self.tally.client_errors}"
        )
        for kind, n in sorted(self.tally.client_error_kinds.items(), key=lambda kv: -kv[1])[:5]:
            say(f"  client: {n} x {kind}")
        for line in problems[:40]:
            say(f"  {line}")
        say(f"submitted: {len(submitted)} of {len(self.flows)}")
        say(f"completed: {completed}")
        say(f"failed with a correct error: {failed_ok}")
        say(f"failed otherwise: {failed_other}")
        say(f"lost: {lost}")
        say(f"steps rerun after their result was committed: {len(reruns)}")
        say(f"steps run again before their result was committed (allowed): {again}")
        say(f"wrong results: {wrong}")
        rec = recoveries
        extra = (
            f"not recovered: {rec.unrecovered}; finished by a run started before the kill: "
            f"{rec.covered}; runs that outlived their node's SIGKILL: {rec.outlived}"
        )
        if rec.times:
            ordered = sorted(rec.times)
            p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
            say(
                f"time to recover a step whose node died: mean {sum(ordered) / len(ordered):.2f}s,"
                f" p99 {p99:.2f}s (n={len(ordered)}; {extra})"
            )
        else:
            say(f"time to recover a step whose node died: no such step ({extra})")
        (self.root / "kills.json").write_text(json.dumps(self.tally.kills))
        bad = lost + len(reruns) + wrong + failed_other
        return 1 if bad else 0

    def reruns(self, runs: dict[str, list[dict[str, Any]]]) -> tuple[list[str], int]:
        """Executions of a step that started after its result was committed: after the
        first start of a step that uses it, or (the last step) after the workflow ended."""
        reruns: list[str] = []
        again = 0
        for f in self.flows:
            starts = {
                step: [e["t"] for e in runs.get(f"{f.wid}/{step}", []) if e["event"] == "start"]
                for step in DEPENDENTS
            }
            for step, users in DEPENDENTS.items():
                ts = starts[step]
                if len(ts) > 1:
                    again += len(ts) - 1
                later = [starts[u][0] for u in users if starts[u]]
                if not users and f.status == "SUCCESSFUL" and f.ended_seen_at is not None:
                    later = [f.ended_seen_at]
                if later:
                    committed_by = min(later)
                    for t in ts:
                        if t > committed_by:
                            reruns.append(
                                f"{f.wid}/{step} started {t - committed_by:.2f}s after its "
                                "result was used"
                            )
                            again -= 1
        return reruns, max(again, 0)

    def recoveries(self, runs: dict[str, list[dict[str, Any]]]) -> Recovery:
        """For each SIGKILL: the steps running on that node (started there, not ended) and
        how long until each started again anywhere."""
        out = Recovery()
        for killed_at, name in self.tally.kills:
            for events in runs.values():
                there = [e for e in events if e["node"] == name and e["t"] <= killed_at]
                if not there or there[-1]["event"] != "start":
                    continue
                last = there[-1]
                ends = [e for e in events if e["event"] == "end" and e["t"] > last["t"]]
                if any(e["pid"] == last["pid"] for e in ends):
                    if ends[0]["t"] > killed_at:
                        out.outlived += 1  # its worker outlived the node's SIGKILL
                    continue
                after = [e["t"] for e in events if e["event"] == "start" and e["t"] > killed_at]
                if after:
                    out.times.append(after[0] - killed_at)
                elif ends:
                    out.covered += 1  # a run started elsewhere before the kill finished it
                else:
                    out.unrecovered += 1
        return out


@dataclass
class Recovery:
    times: list[float] = field(default_factory=list)
    covered: int = 0
    unrecovered: int = 0
    outlived: int = 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5, choices=range(3, 9), metavar="3..8")
    parser.add_argument("--workflows", type=int, default=200)
    parser.add_argument("--in-flight", type=int, default=20, help="workflows running at once")
    parser.add_argument(
        "--interval-s",
        type=float,
        nargs=2,
        default=(4.0, 10.0),
        metavar=("MIN", "MAX"),
        help="time between two kills",
    )
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="the whole run")
    parser.add_argument(
        "--drain-s",
        type=float,
        default=360.0,
        help="of the whole run, kept for finishing once the chaos stops",
    )
    parser.add_argument("--poll-s", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the run's folder")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    root = Path(tempfile.mkdtemp(prefix="hivemesh-chaos-"))
    say(
        f"hivemesh chaos: {args.nodes} nodes, {args.workflows} workflows, seed {args.seed} "
        f"(homes, logs and execution records in {root})"
    )
    chaos = Chaos(args, root)
    status = 1
    try:
        trio.run(chaos.drive)
        chaos.swarm.stop_all()
        status = chaos.report()
    finally:
        chaos.swarm.stop_all()
        if status == 0 and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            say(f"  kept {root}")
    return status


if __name__ == "__main__":
    sys.exit(main())
