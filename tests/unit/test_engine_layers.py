"""The engine's modules import one way: each only from the layers below it (STYLE.md).

Read from the source (every import, also those inside functions and ``TYPE_CHECKING``
blocks), so a circle cannot come back unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

import workflows.engine

ENGINE = Path(workflows.engine.__file__).parent

# lower number: lower layer; a module may import only modules with a smaller number
LAYER = {
    "storage": 0,
    "serde": 0,
    "liveness": 0,
    "completions": 0,
    "results": 0,
    "limits": 0,
    "graph": 1,
    "step": 2,
    "runstate": 2,
    "outputs": 2,
    "loop": 3,
    "host": 4,
    "tool_runs": 5,
    "waits": 5,
    "execution": 6,
    "lifecycle": 7,
}


def _engine_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "workflows.engine":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("workflows.engine."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("workflows.engine."):
                    found.add(alias.name.split(".")[2])
    return found


def test_every_engine_module_has_a_layer() -> None:
    modules = {p.stem for p in ENGINE.glob("*.py") if p.stem != "__init__"}
    assert modules == set(LAYER)


def test_engine_modules_import_only_from_lower_layers() -> None:
    upward = []
    for name, layer in LAYER.items():
        for dep in _engine_imports(ENGINE / f"{name}.py"):
            if LAYER[dep] >= layer:
                upward.append(f"{name} (layer {layer}) imports {dep} (layer {LAYER[dep]})")
    assert upward == []


def test_no_engine_part_is_left_in_the_flat_package() -> None:
    flat = {p.stem.lstrip("_") for p in ENGINE.parent.glob("_*.py")}
    assert flat & set(LAYER) == set()
