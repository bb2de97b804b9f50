"""The import graph of the three packages: no module imports a module that imports it back (directly or through
others, function-local imports included), and imports run one way: ablations and dashboards -> mm1core, never back,
and neither imports the other (running a study and reporting it meet in the results files)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import REPO

PACKAGES = ("ablations", "mm1core", "dashboards")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, anywhere in its code (a function-local import counts)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    found.add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its modules in order, the first again at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_a_module_that_imports_it_back():
    assert _cycle(_graph()) is None


def test_imports_run_one_way():
    backwards = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if (module.startswith(("mm1core", "dashboards")) and target.startswith("ablations"))
        or (module.startswith(("mm1core", "ablations")) and target.startswith("dashboards"))
    ]
    assert backwards == []


def test_the_driver_starts_without_the_heavy_packages():
    """A study's driver starts Ray and MLflow's store side by side (ablations.run): torch belongs in the workers,
    plotly in the report's own process, and mlflow in the thread that makes the client; any of them imported at the
    top of a driver module is seconds added to every run's start (bench/README.md, run overhead)."""
    code = "import sys, ablations.cli, ablations.run; print(sorted({'torch', 'mlflow', 'plotly'} & set(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
