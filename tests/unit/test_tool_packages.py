"""Tools installed per step, the pure parts: requirements, parameters, the step forms, the
tool a package publishes, the decorator's metadata, where pip looks, and placement's
preference for a node that has the package installed already."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from node.config import load_config
from node.scheduler import Candidate, place
from tests.tool_wheels import write_tool_wheel
from workflows.dsl import check_tools, parse_workflow
from workflows.errors import (
    ToolConfigError,
    ToolExecutionError,
    UnknownToolError,
    WorkflowDefinitionError,
    error_text,
)
from workflows.ray_tools import PackageInstall
from workflows.tools import (
    ToolRegistry,
    check_parameters,
    check_requirement,
    is_package_ref,
    load_package_tool,
    tool,
)
from workflows.tools._scaffold import new_tool_package


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hm-probe==1.0.0", "hm-probe==1.0.0"),
        ("my_tools [fast, x] >= 1.2 , <2", "my_tools[fast,x]>=1.2,<2"),
        ("zope.interface~=5.0", "zope.interface~=5.0"),
        ("plain", "plain"),
    ],
)
def test_plain_requirements_are_accepted(text: str, expected: str) -> None:
    assert check_requirement(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "--index-url http://evil.example/simple x",
        "-e .",
        "x @ https://example.org/x.whl",
        "./local/path",
        "x; python_version < '3'",
        "x==1\n--extra-index-url=y",
        "",
        "x" * 300,
    ],
)
def test_requirements_with_urls_paths_markers_or_options_are_refused(text: str) -> None:
    with pytest.raises(ToolConfigError):
        check_requirement(text)


def test_parameters_become_environment_strings() -> None:
    assert check_parameters({"API_MODE": "fast", "RETRIES": 3, "RATIO": 0.5}) == {
        "API_MODE": "fast",
        "RETRIES": "3",
        "RATIO": "0.5",
    }


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"1BAD": "x"}, "invalid parameter name"),
        ({"A-B": "x"}, "invalid parameter name"),
        ({"PATH": "/tmp"}, "reserved"),
        ({"PIP_INDEX_URL": "http://evil"}, "reserved"),
        ({"ld_preload": "x"}, "reserved"),
        ({"FLAG": True}, "not a boolean"),
        ({"LIST": [1]}, "not list"),
        ({"BIG": "x" * 5000}, "at most 4096"),
        ({f"P{i}": "x" for i in range(65)}, "at most 64"),
    ],
)
def test_bad_parameters_are_refused_saying_why(params: dict[str, Any], says: str) -> None:
    with pytest.raises(ToolConfigError, match=says):
        check_parameters(params)


def test_a_package_ref_is_a_name_without_a_dot_and_a_version() -> None:
    assert is_package_ref("hm-probe@1.0.0")
    assert not is_package_ref("text.upper@1")  # an installed tool, a version prefix
    assert not is_package_ref("hm-probe")


STEPS = """
id: forms
steps:
  - name: short
    tool: hm-probe@1.0.0
    parameters: [{name: MODE, value: fast}, {name: N, value: 2}]
  - name: explicit
    tool: hm_probe.probe
    package: "hm-probe>=2,<3"
  - name: installed
    tool: text.upper@1
    inputs: [{name: text, value: hi}]
"""


def test_the_two_package_forms_and_an_installed_tool() -> None:
    spec = parse_workflow(STEPS)
    short, explicit, installed = spec.steps
    assert (short.tool, short.version, short.package) == ("hm-probe", None, "hm-probe==1.0.0")
    assert short.package_tool is None
    assert short.run_options() == {
        "package": "hm-probe==1.0.0",
        "parameters": {"MODE": "fast", "N": "2"},
    }
    assert (explicit.package, explicit.package_tool) == ("hm-probe>=2,<3", "hm_probe.probe")
    assert (installed.tool, installed.version, installed.package) == ("text.upper", "1", None)
    assert type(spec).from_json(spec.to_json()) == spec
    # package steps are not checked against this machine's tools: they are installed where
    # they run
    check_tools(spec, ToolRegistry.from_entry_points("text"))


@pytest.mark.parametrize(
    ("step", "says"),
    [
        ("tool: hm-probe", "invalid tool name 'hm-probe'"),
        ("tool: hm-probe@1.0\n    version: '1'", "gives the version already"),
        ("tool: hm-probe@1 0", "invalid version"),
        ("tool: x.y\n    package: '-e .'", "invalid package requirement"),
        ("tool: other\n    package: hm-probe==1", "invalid tool name 'other'"),
        ("tool: x.y\n    parameters: [{name: HOME, value: /}]", "reserved"),
        ("tool: x.y\n    parameters: [{name: A, value: {b: 1}}]", "a string or a number"),
    ],
)
def test_bad_package_steps_are_refused(step: str, says: str) -> None:
    with pytest.raises(WorkflowDefinitionError, match=says):
        parse_workflow(f"id: w\nsteps:\n  - name: a\n    {step}\n")


def _install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wheel: Path) -> None:
    """Unpack a wheel into a folder on sys.path: an installed distribution for
    importlib.metadata (what pip does in a step's runtime env)."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    monkeypatch.syspath_prepend(str(site))


def test_the_package_s_own_tool_or_the_one_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (
        "from workflows.tools import tool\n"
        "@tool('hm_multi.first', output=int)\n"
        "def first() -> int:\n    return 1\n"
        "@tool('other.second', output=int)\n"
        "def second() -> int:\n    return 2\n"
    )
    wheel = write_tool_wheel(
        tmp_path / "w",
        "hm-multi",
        "1.0.0",
        source=source,
        tools={"hm_multi.first": "first", "other.second": "second"},
    )
    _install(tmp_path, monkeypatch, wheel)
    try:
        # the only one of the group named like the package
        assert load_package_tool("hm-multi==1.0.0").name == "hm_multi.first"
        assert load_package_tool("hm-multi", "other.second").invoke({}) == {"result": 2}
        with pytest.raises(UnknownToolError, match="does not publish it"):
            load_package_tool("hm-multi", "hm_multi.third")
        with pytest.raises(UnknownToolError, match="is not installed"):
            load_package_tool("hm-absent==1")
    finally:
        sys.modules.pop("hm_multi", None)


def test_a_package_with_several_tools_and_none_under_its_name_needs_the_tool_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = (
        "from workflows.tools import tool\n"
        "@tool('a.one', output=int)\n"
        "def one() -> int:\n    return 1\n"
        "@tool('b.two', output=int)\n"
        "def two() -> int:\n    return 2\n"
    )
    wheel = write_tool_wheel(
        tmp_path / "w", "hm-pair", "1.0.0", source=source, tools={"a.one": "one", "b.two": "two"}
    )
    _install(tmp_path, monkeypatch, wheel)
    try:
        with pytest.raises(UnknownToolError, match=r"publishes 2 tools .*write 'tool: NAME'"):
            load_package_tool("hm-pair==1.0.0")
    finally:
        sys.modules.pop("hm_pair", None)


def test_the_decorator_declares_tags_resources_and_idempotence() -> None:
    @tool("demo.work", tags=["nlp", "demo"], resources={"num_cpus": 1}, idempotent=True)
    def work(x: int) -> int:
        return x

    assert work.tags == ("nlp", "demo") and work.idempotent and not work.deterministic
    spec = work.spec()
    assert (spec["tags"], spec["resources"], spec["idempotent"]) == (
        ["nlp", "demo"],
        {"num_cpus": 1},
        True,
    )
    for bad in ({"tags": "nlp"}, {"tags": ["Bad Tag"]}, {"resources": {"num_cpus": -1}}):
        with pytest.raises(ToolConfigError):
            tool("demo.bad", **bad)(lambda: 1)  # type: ignore[arg-type]


def test_a_tool_s_exception_keeps_its_type_message_and_traceback() -> None:
    @tool("demo.fails")
    def fails(x: int) -> int:
        raise KeyError(f"no such thing: {x}")

    with pytest.raises(ToolExecutionError) as info:
        fails.invoke({"x": 7})
    exc = info.value
    assert exc.exc_type == "KeyError"
    assert str(exc) == "tool 'demo.fails' failed: KeyError: 'no such thing: 7'"
    assert exc.traceback is not None and exc.traceback.startswith("Traceback (most recent")
    assert 'raise KeyError(f"no such thing: {x}")' in exc.traceback
    assert "invoke" not in exc.traceback  # the tool's own frames only
    text = error_text(exc)
    assert text.splitlines()[0] == str(exc) and text.endswith("KeyError: 'no such thing: 7'")
    import pickle

    assert pickle.loads(pickle.dumps(exc)).traceback == exc.traceback


def test_tools_install_is_off_by_default_and_the_tools_mapping_sets_it() -> None:
    assert not load_config(config_file=None, environ={}).tool_packages.install
    config = load_config(
        config_file=None,
        flags={"tools": {"enable": "text", "install": True, "find_links": "/w1,/w2"}},
        environ={},
    )
    assert config.tools == "text"
    assert config.tool_packages.install and config.tool_packages.find_links == ["/w1", "/w2"]
    env = load_config(config_file=None, environ={"HIVEMESH_TOOL_PACKAGES__INSTALL": "true"})
    assert env.tool_packages.install and env.tools == "all"


def test_where_pip_looks() -> None:
    install = PackageInstall(no_index=True, find_links=("/wheels",), timeout_s=90)
    env = install.runtime_env("hm-probe==1.0.0", {"MODE": "x"})
    assert env["pip"] == {
        "packages": ["hm-probe==1.0.0"],
        "pip_install_options": [
            "--disable-pip-version-check",
            "--no-input",
            "--no-index",
            "--find-links",
            "/wheels",
        ],
    }
    assert env["env_vars"] == {"MODE": "x"} and env["config"] == {"setup_timeout_seconds": 90}
    assert PackageInstall(index_url="https://i.example/simple").pip_options()[-2:] == [
        "--index-url",
        "https://i.example/simple",
    ]


def test_placement_prefers_a_free_node_with_the_package_installed() -> None:
    cold_local = Candidate("me", True, "p==1", running=0, capacity=4)
    cold = Candidate("cold", False, "p==1", capacity=4)
    warm = Candidate("warm", False, "p==1", capacity=4, warm=True)
    decision = place("package p==1", None, [cold_local, cold, warm])
    assert decision.node == "warm" and "installed already" in decision.reason
    # warm here: stays here
    here = Candidate("me", True, "p==1", capacity=4, warm=True)
    assert place("package p==1", None, [here, cold, warm]).node == "me"


def test_tool_new_writes_a_package_and_refuses_bad_names(tmp_path: Path) -> None:
    target = new_tool_package("word-count", tmp_path)
    assert (target / "pyproject.toml").read_text().count('"word_count.run" = "word_count:run"')
    assert (target / "word_count" / "__init__.py").exists()
    assert (target / "tests" / "test_word_count.py").exists()
    with pytest.raises(ToolConfigError, match="exists already"):
        new_tool_package("word-count", tmp_path)
    for bad in ("-x", "a b", "9lives"):
        with pytest.raises(ToolConfigError):
            new_tool_package(bad, tmp_path)
