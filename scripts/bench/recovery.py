#!/usr/bin/env python3
"""Recovery benchmark: kill -9 a driver mid-workflow, resume in a new driver, count reruns.

    .venv/bin/python scripts/bench/recovery.py                     # against hivemesh
    .venv/bin/python scripts/bench/recovery.py --system ray247     # Ray Workflows 2.47

1. A driver runs workflow "recovery": a chain of --steps steps; each step appends one line
   "index epoch pid time" to a log file (one O_APPEND write) when its body starts, then
   sleeps --step-sleep-ms.
2. When --kill-at of the steps have logged, the driver is killed with SIGKILL, then its
   process group and every process it started (its local Ray) by pid.
3. A new driver (new local Ray, same storage) calls ``workflow.resume("recovery")``.

Printed: resume call -> first newly executed step, resume call -> finished, and the steps
whose body ran more than once. Delivery is at-least-once, so the step(s) in flight at the
kill may legitimately run again; a step whose result was committed must never run again.
From outside we cannot see commits, so a re-run of a step more than two indices below the
last step logged before the kill counts as a re-run of a committed step (must be 0).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# scripts/bench is on sys.path as the running script's folder (it is not a package).
from _common import (
    BENCH_DIR,
    ROOT,
    SYSTEMS,
    VenvSetupError,
    bench_env,
    ensure_ray247_venv,
    kill_tree,
    python_for,
)

IN_FLIGHT_MARGIN = 2  # steps this close below the last logged one may not have committed


@dataclass(frozen=True)
class LogLine:
    index: int
    epoch: str
    pid: int
    t: float


def read_log(path: Path) -> list[LogLine]:
    """Complete lines only: a line still being written has no newline yet."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    lines = []
    for raw in text.splitlines(keepends=True):
        if not raw.endswith("\n"):
            continue
        index, epoch, pid, t = raw.split()
        lines.append(LogLine(int(index), epoch, int(pid), float(t)))
    return lines


def read_events(path: Path) -> dict[str, dict[str, Any]]:
    events: dict[str, dict[str, Any]] = {}
    for raw in path.read_text(errors="replace").splitlines():
        if raw.startswith("{"):
            try:
                event = json.loads(raw)
            except json.JSONDecodeError:
                continue
            events.setdefault(event.get("event", "?"), event)
    return events


def tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except FileNotFoundError:
        return ""


class RecoveryError(Exception):
    """The experiment could not be carried out; the message says where and why."""


def start_driver(
    mode: str, args: argparse.Namespace, python: Path, workdir: Path
) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = workdir / f"{mode}.stdout", workdir / f"{mode}.stderr"
    cmd = [
        str(python),
        str(BENCH_DIR / "_recovery_driver.py"),
        mode,
        args.system,
        str(workdir / "storage"),
        str(workdir / "steps.log"),
        str(args.steps),
        str(args.step_sleep_ms / 1000),
    ]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            # BENCH_TAG lets kill_driver find every process this driver started.
            env=bench_env(args.system, BENCH_EPOCH=mode, BENCH_TAG=f"{workdir}:{mode}"),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # its own process group, so killpg reaches its Ray
        )
    return proc, out, err


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Processes whose environment carries ``BENCH_TAG=tag``: ours, wherever reparented."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("BENCH_TAG") == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def kill_driver(proc: subprocess.Popen[bytes], tag: str) -> None:
    """SIGKILL the driver, then its process group and everything it started, by pid."""
    started: list[psutil.Process] = []
    if proc.poll() is None:
        with contextlib.suppress(psutil.NoSuchProcess):
            started = psutil.Process(proc.pid).children(recursive=True)
        os.kill(proc.pid, signal.SIGKILL)
    kill_tree(proc.pid)  # the group may outlive its leader
    proc.wait()
    # Ray may have forked a worker after the snapshot above; the tag finds it anyway.
    started += [p for p in tagged_processes(tag) if p not in started]
    for child in started:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            continue
    _gone, alive = psutil.wait_procs(started, timeout=15)
    if alive:
        raise RecoveryError(f"processes of the killed driver survived: {[p.pid for p in alive]}")


def wait_for_progress(
    proc: subprocess.Popen[bytes], log: Path, target: int, timeout_s: float, out: Path, err: Path
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len({line.index for line in read_log(log)}) >= target:
            return
        if proc.poll() is not None:
            error = read_events(out).get("error")
            if error:
                raise RecoveryError(f"first driver: {error['error']}")
            raise RecoveryError(
                f"the first driver exited (code {proc.returncode}) before {target} steps had "
                f"run:\n{tail(err)}"
            )
        time.sleep(0.02)
    raise RecoveryError(f"fewer than {target} steps ran within {timeout_s:.0f} s:\n{tail(err)}")


def run_experiment(args: argparse.Namespace, python: Path, workdir: Path) -> dict[str, Any]:
    log = workdir / "steps.log"
    kill_target = max(1, int(args.steps * args.kill_at))

    first, first_out, first_err = start_driver("run", args, python, workdir)
    try:
        wait_for_progress(first, log, kill_target, args.timeout, first_out, first_err)
    finally:
        kill_driver(first, f"{workdir}:run")
    t_kill = time.time()
    run_events = read_events(first_out)
    if "error" in run_events:
        raise RecoveryError(f"first driver: {run_events['error']['error']}")
    before = read_log(log)
    last_before = max(line.index for line in before)

    t_spawn_second = time.time()
    second, second_out, second_err = start_driver("resume", args, python, workdir)
    try:
        second.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired as exc:
        raise RecoveryError(f"resume did not finish within {args.timeout:.0f} s") from exc
    finally:
        kill_driver(second, f"{workdir}:resume")
    events = read_events(second_out)
    if "error" in events or "done" not in events:
        reason = events.get("error", {}).get("error") or f"exit code {second.returncode}"
        raise RecoveryError(f"resume failed: {reason}\n{tail(second_err)}")

    lines = read_log(log)
    after = [line for line in lines if line.t > t_kill]
    counts = Counter(line.index for line in lines)
    twice = sorted(i for i, n in counts.items() if n > 1)
    committed_rerun = [i for i in twice if i < last_before - IN_FLIGHT_MARGIN]
    resume_call = events["resume_call"]["t"]
    first_new = min(after, key=lambda line: line.t) if after else None
    return {
        "system": args.system,
        "steps": args.steps,
        "step_sleep_ms": args.step_sleep_ms,
        "run_call_to_kill_s": t_kill - run_events["run_call"]["t"]
        if "run_call" in run_events
        else None,
        "steps_logged_before_kill": len({line.index for line in before}),
        "last_index_before_kill": last_before,
        "resume_driver_startup_s": resume_call - t_spawn_second,
        "resume_to_first_new_step_s": first_new.t - resume_call if first_new else None,
        "first_new_step_index": first_new.index if first_new else None,
        "resume_to_finish_s": events["done"]["t"] - resume_call,
        "steps_run_after_resume": len({line.index for line in after}),
        "result": events["done"].get("result"),
        "result_ok": events["done"].get("result") == args.steps,
        "never_ran": sorted(set(range(args.steps)) - set(counts)),
        "executed_twice": twice,
        "executions_per_rerun_step": {i: counts[i] for i in twice},
        "committed_steps_rerun": committed_rerun,
    }


def report(r: dict[str, Any]) -> str:
    def sec(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} s"

    def listed(indices: list[int]) -> str:
        shown = ", ".join(map(str, indices[:20])) + (", ..." if len(indices) > 20 else "")
        return f"{len(indices)} [{shown}]" if indices else "0"

    in_flight = [i for i in r["executed_twice"] if i not in r["committed_steps_rerun"]]
    rows = [
        ("system", SYSTEMS[r["system"]]),
        ("chain", f"{r['steps']} steps, each logs then sleeps {r['step_sleep_ms']:g} ms"),
        (
            "killed after",
            f"{r['steps_logged_before_kill']} steps had started "
            f"(last index {r['last_index_before_kill']}); run call -> kill "
            f"{sec(r['run_call_to_kill_s'])}",
        ),
        (
            "resume driver start-up",
            f"{sec(r['resume_driver_startup_s'])} (process start, ray.init, workflow.init)",
        ),
        (
            "resume -> first new step",
            f"{sec(r['resume_to_first_new_step_s'])} (step {r['first_new_step_index']})",
        ),
        (
            "resume -> finished",
            f"{sec(r['resume_to_finish_s'])} "
            f"({r['steps_run_after_resume']} step bodies ran after the resume)",
        ),
        (
            "result",
            f"{r['result']} ({'ok' if r['result_ok'] else 'WRONG, expected ' + str(r['steps'])})",
        ),
        ("steps never run", listed(r["never_ran"]) + " (must be 0)"),
        ("steps executed twice", listed(r["executed_twice"])),
        ("  in flight at the kill", listed(in_flight) + " (allowed: at-least-once)"),
        ("  committed, run again", listed(r["committed_steps_rerun"]) + " (must be 0)"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append(
        f"\n'committed, run again' = re-runs of steps more than {IN_FLIGHT_MARGIN} below the last "
        "step logged before the kill; the commit itself is not visible from outside."
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="kill -9 a driver mid-workflow, resume in a new driver, count re-runs."
    )
    parser.add_argument("--system", choices=["hivemesh", "ray247"], default="hivemesh")
    parser.add_argument("--steps", type=int, default=300, help="chain length (default 300)")
    parser.add_argument("--step-sleep-ms", type=float, default=10.0, help="default 10")
    parser.add_argument(
        "--kill-at", type=float, default=0.5, help="fraction of steps started before the kill"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="per driver, seconds")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also save the figures")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (log, storage)")
    args = parser.parse_args(argv)
    if not 0 < args.kill_at < 1:
        parser.error("--kill-at must be between 0 and 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    python = python_for(args.system)
    if args.system == "ray247":
        try:
            ensure_ray247_venv(lambda msg: print(msg, flush=True))
        except VenvSetupError as exc:
            print(f"Ray 2.47 venv setup failed: {exc}", file=sys.stderr)
            return 1
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-recovery-{args.system}-"))
    print(f"recovery benchmark on {SYSTEMS[args.system]} (work dir {workdir})", flush=True)
    try:
        result = run_experiment(args, python, workdir)
    except RecoveryError as exc:
        message = str(exc)
        if "not available:" in message:
            print(f"{SYSTEMS[args.system]} {message.split('first driver: ', 1)[-1]}")
        else:
            print(f"recovery benchmark failed: {message}", file=sys.stderr)
        print(f"logs kept in {workdir}", file=sys.stderr)
        return 1
    print(report(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"figures saved to {args.json}")
    if args.keep:
        print(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    ok = result["result_ok"] and not result["never_ran"] and not result["committed_steps_rerun"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
