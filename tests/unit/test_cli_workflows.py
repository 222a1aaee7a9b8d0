"""The CLI's parts for registered workflows that need no node: validate's note when no
node can be asked about sub-workflows, and 'run' / 'workflows' with no node to talk to."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from node.cli import main

PARENT = (
    "id: parent\nsteps:\n  - name: child\n    workflow: kid\n"
    "    inputs: [{name: text, value: hi}]\n"
)


def test_validate_says_sub_workflows_were_not_checked_without_a_node(tmp_path: Path):
    flow = tmp_path / "parent.yaml"
    flow.write_text(PARENT)
    home = ["--home", str(tmp_path / "home")]
    result = CliRunner().invoke(main, ["validate", str(flow), *home])
    assert result.exit_code == 0, result.output
    assert "sub-workflows not checked (no node to ask)" in result.stderr
    local = CliRunner().invoke(main, ["validate", str(flow), *home, "--local"])
    assert "sub-workflows not checked (--local)" in local.stderr
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        "id: plain\nsteps: [{name: s, tool: text.upper, inputs: [{name: text, value: x}]}]\n"
    )
    quiet = CliRunner().invoke(main, ["validate", str(plain), *home])
    assert "sub-workflows" not in quiet.stderr  # (none to check: the node is not asked)


def test_run_and_workflows_without_a_node_are_one_line(tmp_path: Path):
    home = ["--home", str(tmp_path / "home")]
    for args in (["run", "shout", *home], ["workflows", *home]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
