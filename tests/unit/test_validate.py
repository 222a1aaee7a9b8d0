"""``hivemesh validate`` and ``hivemesh schema workflow`` on a corpus of workflow files.

tests/data/workflows/invalid/NAME.yaml comes with NAME.errors: every error ``validate``
must print for it, in order, as ``LINE:COL: error: MESSAGE`` (the file's path comes first
in the output); a line ending in `` ...`` is matched as a prefix (for lists that grow as
tools are added). The submit path (the parse worker's ``serve``, as a node runs it, and
``hivemesh submit``) must give the first of them. The homes here have no node, so the
tools are the ones installed with hivemesh (``--local`` says so explicitly).
"""

from __future__ import annotations

import io
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from node.cli import main
from tests import hostile_workflows as hostile
from tests.unit.test_cli_submit import EXPECTED as HOSTILE_EXPECTED
from workflows.dsl import (
    KnownTool,
    ParseLimits,
    ToolCatalog,
    check_document,
    check_tools,
    parse_workflow,
    workflow_json_schema,
)
from workflows.dsl._source import load_yaml
from workflows.dsl.worker import error_from_fields, frame, read_frame, serve
from workflows.errors import WorkflowDefinitionError
from workflows.tools import ToolRegistry

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "data" / "workflows"
VALID = sorted((CORPUS / "valid").glob("*.yaml"))
INVALID = sorted((CORPUS / "invalid").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "workflows" / "examples").glob("*.yaml"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def expected_errors(path: Path) -> list[str]:
    lines = path.with_suffix(".errors").read_text().splitlines()
    return [line for line in lines if line.strip()]


def assert_lines(got: list[str], want: list[str]) -> None:
    assert len(got) == len(want), "\n".join(got)
    for line, expected in zip(got, want, strict=True):
        if expected.endswith(" ..."):
            assert line.startswith(expected[:-4]), f"{line!r} does not start with {expected!r}"
        else:
            assert line == expected


def validate(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["validate", "--home", str(home), *args])


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"  # no node runs from it


def test_the_corpus_is_there():
    assert len(VALID) >= 3 and len(INVALID) >= 10
    for path in INVALID:
        assert expected_errors(path), f"{path.name} has no .errors sidecar"


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_validate_reports_every_error_of_an_invalid_file(path: Path, home: Path):
    result = validate(home, "--local", str(path))
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert_lines(result.stdout.splitlines(), [f"{path}:{e}" for e in expected_errors(path)])


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_validate_json_gives_the_same_errors(path: Path, home: Path):
    result = validate(home, "--local", "--json", str(path))
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["valid"] is False
    [entry] = data["files"]
    assert entry["file"] == str(path) and entry["valid"] is False
    got = [f"{e['line']}:{e['column']}: error: {e['message']}" for e in entry["errors"]]
    assert_lines(got, expected_errors(path))


def test_valid_files_pass_and_one_invalid_file_fails_the_run(home: Path):
    valid = [str(p) for p in [*VALID, *EXAMPLES]]
    result = validate(home, "--local", *valid)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"{p}: ok" for p in valid]
    bad = INVALID[0]
    result = validate(home, "--local", *valid, str(bad))
    assert result.exit_code == 1
    assert [line for line in result.stdout.splitlines() if line.endswith(": ok")] == [
        f"{p}: ok" for p in valid
    ]


def test_without_a_node_the_local_tools_are_used_and_said_to_be(home: Path):
    result = validate(home, str(CORPUS / "invalid" / "tools_unknown.yaml"))
    assert result.exit_code == 1
    assert result.stderr == (
        "note: tools checked against this machine's installed tools only "
        f"(no node running from {home} and no --node)\n"
    )
    assert "uses unknown tool 'text.uper'" in result.stdout


def test_an_unreadable_file_is_an_error_line(home: Path, tmp_path: Path):
    missing = tmp_path / "nowhere.yaml"
    result = validate(home, "--local", str(missing))
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{missing}: error: cannot read the workflow file")


# --- the submit path gives the same first error --------------------------------------------


def _parse_in_worker(data: bytes, source: str) -> dict[str, Any]:
    """One request through the parse worker's loop (what a node's parse pool runs)."""
    header = json.dumps({"source": source, "limits": ParseLimits().model_dump()}).encode()
    replies = io.BytesIO()
    # the worker's loop limits its own process's CPU time (RLIMIT_CPU, a budget per parse):
    # here that process is the test run's, which must not be killed minutes later
    cpu_limit = resource.getrlimit(resource.RLIMIT_CPU)
    try:
        assert serve(io.BytesIO(frame(header) + frame(data)), replies) == 0
    finally:
        resource.setrlimit(resource.RLIMIT_CPU, cpu_limit)
    replies.seek(0)
    reply = read_frame(replies, 1 << 20)
    assert reply is not None
    parsed: dict[str, Any] = json.loads(reply)
    return parsed


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_the_submit_parser_gives_the_first_error(path: Path):
    errors = expected_errors(path)
    line, column, message = errors[0].split(":", 2)
    message = message.removeprefix(" error: ")
    reply = _parse_in_worker(path.read_bytes(), path.name)
    if path.stem.startswith("tools_"):  # well-formed: a node checks the tools it has
        assert reply["ok"] is True
        spec = parse_workflow(path.read_bytes(), source=path.name)
        with pytest.raises(WorkflowDefinitionError) as info:
            check_tools(spec, ToolRegistry.from_entry_points("all"))
        expected = message.removesuffix(" ...").replace("this machine offers", "this node has")
        assert info.value.message.startswith(expected.replace("this machine", "this node"))
        return
    assert reply["ok"] is False
    error = error_from_fields(reply["error"])
    assert error.line == int(line)
    more = len(errors) - 1
    if more:
        plural = "s" if more > 1 else ""
        message += f" (and {more} more problem{plural}: run hivemesh validate {path.name})"
    # (a YAML syntax error says its column in the message too: the one-line form has no other)
    assert error.message in (message, message + f" (column {column})")


def test_submit_fails_with_the_first_error_before_any_network(home: Path):
    path = CORPUS / "invalid" / "unknown_fields.yaml"
    result = CliRunner().invoke(main, ["submit", str(path), "--home", str(home)])
    assert result.exit_code == 1
    first = expected_errors(path)[0].split(": error: ", 1)[1]
    line = expected_errors(path)[0].split(":", 1)[0]
    assert result.stderr == (
        f"error: {path}:{line}: {first} (and 7 more problems: run hivemesh validate {path})\n"
    )


# --- hostile files ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(HOSTILE_EXPECTED))
def test_a_hostile_file_gives_its_one_bound_error(name: str, home: Path, tmp_path: Path):
    line, problem = HOSTILE_EXPECTED[name]
    path = tmp_path / "evil.yaml"
    path.write_bytes(hostile.HOSTILE[name]())
    result = validate(home, "--local", str(path))
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert re.match(rf"^{re.escape(str(path))}:{line}:\d+: error: ", lines[0]), lines[0]
    assert problem in lines[0]


@pytest.mark.parametrize("name", sorted(set(hostile.HOSTILE) - set(HOSTILE_EXPECTED)))
def test_the_other_hostile_files_are_read_within_bounds(name: str, home: Path, tmp_path: Path):
    path = tmp_path / "evil.yaml"
    path.write_bytes(hostile.HOSTILE[name]())
    result = validate(home, "--local", str(path))
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout == f"{path}: ok\n"  # (a brace storm is valid, if useless)


def test_validate_imports_neither_libp2p_nor_ray(home: Path):
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from node.cli import main\n"
        f"r = CliRunner().invoke(main, ['validate', '--home', {str(home)!r}, {str(VALID[0])!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'libp2p', 'ray', 'trio'}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"


# --- the tools a swarm offers -------------------------------------------------------------


def test_a_swarm_catalog_knows_names_and_versions_and_local_schemas():
    local = ToolRegistry.from_entry_points("math")
    swarm = ToolCatalog.of_swarm([("math.add", "1.0.0"), ("img.resize", "2.1.0")], local)
    text = (
        "id: s\nsteps:\n"
        "  - name: a\n    tool: math.add\n    inputs:\n      - {name: a, value: x}\n"
        "  - name: b\n    tool: img.resize@2\n    inputs:\n      - {name: anything, value: 1}\n"
        "  - name: c\n    tool: img.resize@3\n"
        "  - name: d\n    tool: text.upper\n"
    )
    report = check_document(text, source="s.yaml", tools=swarm)
    assert [(p.line, p.column, p.message) for p in report.problems] == [
        (3, 5, "step 'a' does not pass required input 'b' to tool 'math.add'"),
        (
            6,
            26,
            "step 'a' passes a string ('x') as input 'a' of tool 'math.add', which expects "
            "an integer or a number",
        ),
        (
            12,
            11,
            "step 'c' uses unknown tool 'img.resize': no version matching '3' "
            "(any node of the swarm offers version 2.1.0)",
        ),
        (
            14,
            11,
            "step 'd' uses unknown tool 'text.upper': not installed or not enabled on any "
            "node of the swarm (enabled tools: img.resize, math.add)",
        ),
    ]
    assert KnownTool("img.resize", "2.1.0") in swarm._tools["img.resize"]


# --- the JSON Schema ------------------------------------------------------------------------


def _documented_workflows() -> list[tuple[str, str]]:
    """Every ```yaml block of the README and docs/ that is a whole workflow (has an id)."""
    found: list[tuple[str, str]] = []
    for doc in DOCS:
        blocks = re.findall(r"```yaml\n(.*?)```", doc.read_text(), flags=re.S)
        for index, block in enumerate(blocks):
            if re.search(r"^id:", block, flags=re.M):
                found.append((f"{doc.name} block {index + 1}", block))
    return found


def test_the_docs_have_workflow_examples_and_they_are_valid():
    documented = _documented_workflows()
    assert len(documented) >= 2
    for where, text in documented:
        report = check_document(text, source=where)
        assert report.ok, [p.format() for p in report.problems]


def test_schema_workflow_prints_the_schema():
    result = CliRunner().invoke(main, ["schema", "workflow"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema == workflow_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["id", "steps"]
    step = schema["$defs"]["StepSpec"]
    assert step["additionalProperties"] is False
    assert "line" not in step["properties"] and "source" not in schema["properties"]
    assert "NAME@VERSION" in step["properties"]["tool"]["description"]
    for name, model in schema["$defs"].items():  # every field says what it is
        for field, prop in model["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"


def test_every_example_fits_the_schema_and_a_typo_does_not():
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    schema = workflow_json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    files = [(str(p), p.read_text()) for p in [*VALID, *EXAMPLES]]
    for where, text in [*files, *_documented_workflows()]:
        # (as the node reads it: YAML 1.2's booleans, so that `on:` is a key, not True)
        data, _ = load_yaml(text, where, ParseLimits(), deadline=time.monotonic() + 10)
        errors = [e.message for e in validator.iter_errors(data)]
        assert errors == [], where
    typo = yaml.safe_load((CORPUS / "invalid" / "unknown_fields.yaml").read_text())
    assert any("'tol'" in e.message for e in validator.iter_errors(typo))
    bad_name = yaml.safe_load((CORPUS / "invalid" / "wrong_types.yaml").read_text())
    assert any("does not match" in e.message for e in validator.iter_errors(bad_name))


def test_a_tool_whose_validator_breaks_does_not_break_validate():
    from pydantic import BaseModel, field_validator

    class Broken(BaseModel):
        x: int

        @field_validator("x")
        @classmethod
        def _boom(cls, value: int) -> int:
            raise TypeError("a bug in the tool")

    tools = ToolCatalog([KnownTool("a.b", "1.0.0", Broken, ("result",))])
    text = (
        "id: x\nsteps:\n  - name: s\n    tool: a.b\n"
        "    inputs: [{name: x, value: 1}, {name: y, value: 2}]\n"
    )
    report = check_document(text, tools=tools)
    assert [p.message for p in report.problems] == [
        "step 's' passes unknown input 'y' to tool 'a.b' (its inputs: 'x')"
    ]
