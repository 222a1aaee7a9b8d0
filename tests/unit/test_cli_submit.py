"""``hivemesh submit`` with hostile files: one line ``error: ...`` and exit status 1, never a
traceback, in bounded time; the file is read and parsed before any network is touched
(these homes have no node, so reaching for one would be another error)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from node.cli import main
from tests import hostile_workflows as hostile

# the file's problem, as the CLI words it (after "error: FILE:LINE: ")
EXPECTED = {
    "alias bomb in a default": (11, "larger than 100000 YAML nodes once aliases are expanded"),
    "alias bomb in a step value": (14, "larger than 100000 YAML nodes"),
    "alias bomb at top level": (6, "larger than 100000 YAML nodes"),
    "merge-key bomb": (14, "larger than 100000 YAML nodes"),
    "20 MB file": (1031, "the file is larger than 1048576 bytes (workflow_files.max_bytes)"),
    "900 KiB value": (8, "a value of 921600 bytes, more than 262144"),
    "10,000-deep nesting": (8, "nested deeper than 64 levels (workflow_files.max_depth)"),
    "600-deep block nesting": (68, "nested deeper than 64 levels"),
    "binary garbage": (1, "the file is not UTF-8 text"),
    "control character": (8, "character U+0007 is not allowed in YAML text"),
    "invalid YAML": (9, "invalid YAML: did not find expected ',' or ']'"),
    "100,000-digit integer": (8, "numbers may have at most 4300 digits"),
    "10,000 steps": (5004, "more than 1000 steps (workflow_files.max_steps)"),
    "recursive alias": (8, "a value cannot contain itself"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_hostile_file_is_one_error_line(name: str, tmp_path: Path):
    line, problem = EXPECTED[name]
    path = tmp_path / "evil.yaml"
    path.write_bytes(hostile.HOSTILE[name]())
    result = CliRunner().invoke(main, ["submit", str(path), "--home", str(tmp_path / "home")])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}:{line}: "), lines[0]
    assert problem in lines[0]


def test_the_home_config_sets_the_cli_bounds(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text("workflow_files:\n  max_steps: 2\n")
    path = tmp_path / "three.yaml"
    path.write_bytes(hostile.many_steps(3))
    result = CliRunner().invoke(main, ["submit", str(path), "--home", str(home)])
    assert result.exit_code == 1
    assert result.stderr == f"error: {path}:14: more than 2 steps (workflow_files.max_steps)\n"


def test_a_missing_file_and_an_oversized_id(tmp_path: Path):
    home = ["--home", str(tmp_path / "home")]
    result = CliRunner().invoke(main, ["submit", str(tmp_path / "nope.yaml"), *home])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {tmp_path / 'nope.yaml'}: cannot read the workflow")
    path = tmp_path / "ok.yaml"
    path.write_bytes(hostile.many_steps(1))
    result = CliRunner().invoke(main, ["submit", str(path), "--id", "x" * 300, *home])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: cannot send this workflow: workflow_id: ")


@pytest.mark.parametrize("name", ["alias bomb in a default", "binary garbage", "10,000 steps"])
def test_the_installed_command_too(name: str, tmp_path: Path):
    path = tmp_path / "evil.yaml"
    path.write_bytes(hostile.HOSTILE[name]())
    hivemesh = Path(sys.executable).with_name("hivemesh")
    out = subprocess.run(
        [str(hivemesh), "submit", str(path), "--home", str(tmp_path / "home")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith(f"error: {path}:{EXPECTED[name][0]}: ")
    assert out.stderr.count("\n") == 1, out.stderr
