"""``hivemesh tool new``: the package it writes builds and installs (offline, with the
project's own build backend), its own tests pass once installed, and its tool is found
through the ``hivemesh.tools`` entry points as ``tools --local`` reads them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from node.cli import main

pytest.importorskip("flit_core")  # the generated package's build backend (a dev dependency)


def _run(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_a_new_tool_package_installs_and_passes_its_own_tests(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["tool", "new", "word-count", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    package = tmp_path / "word-count"
    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull  # no index anywhere: everything is local
    built = _run(
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--disable-pip-version-check",
        "--target",
        str(site),
        str(package),
        env=env,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert (site / "word_count-0.1.0.dist-info" / "entry_points.txt").exists()

    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    tests = _run(
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(package), env=env
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout

    listed = _run(
        sys.executable,
        "-m",
        "node.cli",
        "tools",
        "--local",
        "--json",
        "--home",
        str(tmp_path / "home"),
        env=env,
    )
    assert listed.returncode == 0, listed.stderr
    tools = {t["name"]: t for t in json.loads(listed.stdout)["tools"]}
    new = tools["word_count.run"]
    assert new["idempotent"] and new["deterministic"] and new["tags"] == ["example"]
    assert new["input_schema"]["required"] == ["text"]
    assert new["output_schema"]["properties"]["result"]["type"] == "string"
    assert "text.upper" in tools  # the node's built-in tools beside it
