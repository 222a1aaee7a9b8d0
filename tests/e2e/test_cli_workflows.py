"""End to end: a real ``hivemesh node start`` registers the workflow files of its home's
workflows folder and of an installed package (entry-point group ``hivemesh.workflows``);
``hivemesh workflows`` lists them with the file it skipped, ``hivemesh run`` starts one by
name (``--wait --json``: its result); a workflow marked ``at_start`` runs once per start:
twice over a restart."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from node.localswarm import LocalSwarm

pytestmark = pytest.mark.e2e

SHOUT = """\
id: shout
name: Shout
inputs: [{name: text, default: hello, description: what to shout}]
steps: [{name: up, tool: text.upper, inputs: [{name: text, value: "{{inputs.text}}"}]}]
outputs: [{name: shouted, value: "{{steps.up.outputs.result}}"}]
"""
STARTUP = """\
id: startup
run: {at_start: true}
steps: [{name: up, tool: text.upper, inputs: [{name: text, value: up}]}]
"""
GREET = """\
id: greet
description: From a package.
steps:
  - name: twice
    workflow: shout
    inputs: [{name: text, value: hi}]
outputs: [{name: said, value: "{{steps.twice.outputs.shouted}}"}]
"""


def installed_package(root: Path) -> Path:
    """A distribution 'my-flows' that publishes its package's folder of workflows, installed
    in ``root`` (a folder to put on PYTHONPATH: importlib.metadata finds its dist-info)."""
    package = root / "my_flows"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "greet.yaml").write_text(GREET)
    info = root / "my_flows-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-flows\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[hivemesh.workflows]\nmy_flows = my_flows\n")
    return root


def test_registered_workflows_are_listed_and_run_by_name_and_at_start_once_per_start(
    tmp_path: Path,
):
    site = installed_package(tmp_path / "site")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    with LocalSwarm(tmp_path, num_cpus=1, env={"PYTHONPATH": path}) as local:
        home = tmp_path / "a"
        (home / "workflows").mkdir(parents=True)
        (home / "workflows" / "shout.yaml").write_text(SHOUT)
        (home / "workflows" / "startup.yaml").write_text(STARTUP)
        (home / "workflows" / "broken.yaml").write_text("id: broken\nsteps: {oops\n")
        node = local.wait_ready(local.start("a", "text"))
        at = ["--home", str(home)]

        listed = local.cli("workflows", *at, "--json")
        assert listed.returncode == 0, listed.stderr
        data = json.loads(listed.stdout)
        assert [(w["workflow"], w["source"]) for w in data["workflows"]] == [
            ("greet", "package:my-flows"),
            ("shout", str(home / "workflows" / "shout.yaml")),
            ("startup", str(home / "workflows" / "startup.yaml")),
        ]
        assert data["workflows"][1]["inputs"] == [
            {
                "name": "text",
                "required": False,
                "default": "hello",
                "default_omitted": False,
                "description": "what to shout",
            }
        ]
        assert [p["source"] for p in data["problems"]] == [str(home / "workflows" / "broken.yaml")]
        human = local.cli("workflows", *at)
        assert '    input text (default "hello"): what to shout' in human.stdout, human.stdout
        assert "    runs at start" in human.stdout
        assert f"skipped {home / 'workflows' / 'broken.yaml'}: " in human.stdout

        ran = local.cli("run", "shout", *at, "--input", "text=swarm", "--wait", "--json")
        assert ran.returncode == 0, ran.stderr
        result = json.loads(ran.stdout)
        assert (result["status"], result["outputs"]) == ("SUCCESSFUL", {"shouted": "SWARM"})
        packaged = local.cli("run", "greet", *at, "--id", "g-1", "--wait", "--json")
        assert json.loads(packaged.stdout)["outputs"] == {"said": "HI"}, packaged.stderr
        again = local.cli("run", "greet", *at, "--id", "g-1")
        assert again.stdout.strip() == "already started g-1 (SUCCESSFUL)", again.stderr
        unknown = local.cli("run", "shuot", *at)
        assert unknown.returncode == 1
        assert unknown.stderr.strip().splitlines() == [
            "error: no workflow 'shuot' is registered on this node (did you mean 'shout'?) "
            "(registered: 'greet', 'shout', 'startup'; 'hivemesh workflows' lists them)"
        ]

        typo = tmp_path / "typo.yaml"
        typo.write_text(GREET.replace("id: greet", "id: typo").replace("shout", "shuot"))
        checked = local.cli("validate", str(typo), *at)
        assert checked.returncode == 1
        assert checked.stdout.splitlines() == [
            f"{typo}:4:1: error: step 'twice' runs workflow 'shuot', which the node has not "
            "registered (did you mean 'shout'?) ('hivemesh workflows' lists them)"
        ], checked.stdout
        assert "sub-workflows checked against the node's" in checked.stderr
        submitted = local.cli("submit", str(typo), *at)
        assert submitted.returncode == 1
        assert "runs workflow 'shuot', which is not registered on this node" in submitted.stderr

        def startups() -> list[str]:
            out = local.cli("list", *at, "--json")
            assert out.returncode == 0, out.stderr
            return sorted(
                w["workflow_id"] for w in json.loads(out.stdout) if w["name"] == "startup"
            )

        assert startups() == ["startup@start-1"]
        assert node.stop() == 0
        local.wait_ready(local.start("a", "text"))
        assert startups() == ["startup@start-1", "startup@start-2"]
        waited = local.cli("result", "startup@start-2", *at, "--wait", "--json")
        assert waited.returncode == 0, waited.stderr
