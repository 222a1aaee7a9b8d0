"""``hivemesh tool new NAME``: a tool package to start from.

It writes a folder ``NAME`` with a ``pyproject.toml`` that publishes the tool under the
``hivemesh.tools`` entry points, the tool module (the :func:`~workflows.tools.tool`
decorator on a typed function) and a pytest test, ready for ``pip install -e NAME`` or
``pip wheel NAME``. The tool is named ``<module>.run`` (``word-count`` → ``word_count.run``):
the only tool of the group named like the package, so a workflow step may call it as
``tool: word-count@0.1.0`` on a node that installs packages.
"""

from __future__ import annotations

from pathlib import Path

from workflows.errors import ToolConfigError
from workflows.tools._packages import PACKAGE_NAME_RE, normalize_package

INITIAL_VERSION = "0.1.0"

_PYPROJECT = """\
[build-system]
requires = ["flit_core>=3.4,<4"]
build-backend = "flit_core.buildapi"

[project]
name = "{name}"
version = "{version}"
description = "A hivemesh tool: {tool}"
requires-python = ">=3.11"
# It runs where hivemesh is installed (a node's environment), which provides
# workflows.tools and pydantic; add the tool's own dependencies here.
dependencies = []

[project.optional-dependencies]
test = ["pytest"]

# what makes it a hivemesh tool: the entry point named after the tool
[project.entry-points."hivemesh.tools"]
"{tool}" = "{module}:run"
"""

_MODULE = '''\
"""{name}: a hivemesh tool package. ``{tool}`` is what workflow steps call."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from workflows.tools import tool

VERSION = "{version}"


@tool(
    "{tool}",
    version=VERSION,
    output=str,
    tags=["example"],
    deterministic=True,  # equal arguments, equal outputs: steps may be replicated
    idempotent=True,  # a repeated call does no more than one: retries are safe
    resources={{"num_cpus": 0.5}},  # what one call needs from the node's Ray
)
def run(text: Annotated[str, Field(max_length=1_000_000)], times: int = 1) -> str:
    """Repeat a text in upper case (replace with what your tool does).

    Inputs come from the signature (types, defaults, Field constraints); the output is
    ``{{"result": <str>}}``. In a step, ``workflows.tools.current_call()`` gives the step's
    idempotency key (for external side effects) and the step's ``parameters`` are
    environment variables (``os.environ``).
    """
    return " ".join([text.upper()] * times)
'''

_TEST = '''\
"""Tests of {tool}: run with ``pytest`` once the package is installed (``pip install -e .``)."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

from workflows.errors import ToolInputError
from {module} import run


def test_it_runs() -> None:
    assert run.invoke({{"text": "hi", "times": 2}}) == {{"result": "HI HI"}}


def test_bad_input_is_refused() -> None:
    with pytest.raises(ToolInputError):
        run.invoke({{"text": 3}})


def test_it_is_published_for_hivemesh() -> None:
    (ep,) = [ep for ep in entry_points(group="hivemesh.tools") if ep.name == "{tool}"]
    assert ep.load() is run
'''

_README = """\
# {name}

A hivemesh tool package: `{tool}`.

    pip install -e '.[test]'     # then: pytest
    pip wheel --no-deps -w dist .  # a wheel for a node's tools.find_links folder

In a workflow, on a node with `tools.install: true`:

    steps:
      - name: shout
        tool: {name}@{version}
        inputs: [{{name: text, value: hello}}]
"""


def new_tool_package(name: str, folder: Path) -> Path:
    """Write the tool package ``name`` into ``folder / name`` and return that path.

    Raises :class:`ToolConfigError` for a name that is not a package name or a folder that
    exists already."""
    if not PACKAGE_NAME_RE.match(name) or len(name) > 100:
        raise ToolConfigError(
            f"invalid package name {name!r}: letters, digits, '-', '_' and '.', starting and "
            "ending with a letter or digit"
        )
    module = normalize_package(name)
    if not module[0].isalpha():
        raise ToolConfigError(f"invalid package name {name!r}: it must start with a letter")
    target = folder / name
    if target.exists():
        raise ToolConfigError(f"{target} exists already: choose another name or --dir")
    values = {"name": name, "module": module, "tool": f"{module}.run", "version": INITIAL_VERSION}
    files = {
        "pyproject.toml": _PYPROJECT,
        f"{module}/__init__.py": _MODULE,
        f"tests/test_{module}.py": _TEST,
        "README.md": _README,
    }
    for relative, template in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values), encoding="utf-8")
    return target
