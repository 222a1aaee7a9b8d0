"""A short chaos run (scripts/chaos.py): three real node processes, each with its own Ray,
ten workflows with handoffs, while nodes (the one the workflows were submitted to
included) are SIGKILLed and restarted and others paused. Nothing may be lost, no step may
run again after its result was committed, and every result must be right."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_a_short_chaos_run_loses_nothing_and_reruns_no_finished_step() -> None:
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "chaos.py"),
        *("--nodes", "3", "--workflows", "10", "--in-flight", "10"),
        *("--interval-s", "3", "6", "--timeout-s", "100", "--drain-s", "40", "--seed", "7"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=170)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    figures = dict(re.findall(r"^([a-z][a-z ,()]+): (\d+)", done.stdout, re.MULTILINE))
    assert figures["lost"] == "0" and figures["wrong results"] == "0", out
    assert figures["steps rerun after their result was committed"] == "0", out
    assert int(figures["completed"]) + int(figures["failed with a correct error"]) == 10, out
    kills = re.search(r"kills: (\d+)", done.stdout)
    assert kills is not None and int(kills.group(1)) >= 1, out  # the chaos happened
