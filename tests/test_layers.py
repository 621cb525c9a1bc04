"""The layers point one way: each package imports only the ones below it, and no modules import each other in a
circle. Read from the source with `ast` (function-level imports count too), so a new upward arrow fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Import name of each source folder (pyproject's package-dir).
SOURCES = {"armorm": ROOT / "armorm", "armorm_export": ROOT / "export", "armorm_client": ROOT / "client"}
CLIENT = "armorm_client"
# Each layer and what it may import from the project besides itself; the light client is below everything.
ALLOWED: dict[str, set[str]] = {
    "armorm.model": {CLIENT},
    "armorm.runtimes": {"armorm.model", CLIENT},
    "armorm.serving": {"armorm.runtimes", "armorm.model", CLIENT},
    "armorm.reference": {"armorm.model", CLIENT},
    "armorm.gateway": {"armorm.model", CLIENT},
    "armorm.launcher": {"armorm.gateway", CLIENT},
    "armorm_export": {"armorm.model", "armorm.runtimes", "armorm.reference", CLIENT},
    "armorm.testing": {"armorm.model", "armorm.runtimes", "armorm.serving", "armorm.reference", "armorm.gateway",
                       "armorm.launcher", "armorm_export", CLIENT},  # above all: nothing imports it
    CLIENT: set(),
}
PROJECT_ROOTS = ("armorm", "armorm_export", "armorm_client")


def module_name(package: str, folder: Path, path: Path) -> str:
    parts = list(path.relative_to(folder).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def project_modules() -> dict[str, Path]:
    return {module_name(package, folder, path): path
            for package, folder in SOURCES.items() for path in folder.rglob("*.py")}


def imports_of(name: str, path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # `from pkg import submodule` imports the submodule, not pkg's own code
                found.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in modules else module)
    return {m for m in found if m.split(".")[0] in PROJECT_ROOTS}


def layer_of(module: str) -> str | None:
    return max((layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")), key=len,
               default=None)


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: {m for m in imports_of(name, path, set(modules)) if m in modules} for name, path in modules.items()}


def test_every_module_belongs_to_a_layer():
    assert [name for name in project_modules() if layer_of(name) is None and name != "armorm"] == []


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(layer):
    upward = sorted(f"{name} → {target}" for name, targets in graph().items() if layer_of(name) == layer
                    for target in targets if layer_of(target) not in ALLOWED[layer] | {layer})
    assert upward == [], f"{layer} may import only {sorted(ALLOWED[layer])}"


def test_no_modules_import_each_other_in_a_circle():
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == [], "\n".join(" → ".join(c) for c in cycles)


def test_served_models_import_only_the_serving_path():
    modules = set(project_modules())
    allowed = {"armorm.serving", "armorm.runtimes", "armorm.model", CLIENT}
    for path in sorted((ROOT / "model_repository").glob("*/1/model.py")):
        imported = {m for m in imports_of("model", path, modules) if m in modules}
        assert {m for m in imported if layer_of(m) not in allowed} == set(), path
