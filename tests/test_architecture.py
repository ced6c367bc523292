"""The package's shape: no import cycles among plantlib's modules, no private names shared across modules.

Imports are read from the source (every `import`, also inside functions and TYPE_CHECKING blocks), so a lazy
import that closes a cycle counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` under `root` (`pkg/__init__.py` is `pkg`)."""
    modules = {}
    for file in sorted((root / package).rglob("*.py")):
        parts = list(file.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = file
    return modules


def _imported_names(module: str, file: Path) -> Iterator[tuple[str, str | None]]:
    """(module imported from, name imported or None) for every import statement in `file`."""
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if file.name == "__init__.py" else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                yield base, alias.name


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (a `from pkg import sub` counts as importing `pkg.sub`)."""
    modules = module_files(root, package)

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, file in modules.items():
        for base, name in _imported_names(module, file):
            target = f"{base}.{name}" if name and f"{base}.{name}" in modules else owner(base)
            if target and target != module:
                graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_plantlib_has_no_import_cycles() -> None:
    graph = import_graph(ROOT, "plantlib")
    assert len(graph) > 20 and graph["plantlib.training.trainer"]  # the scan sees the package and its imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_lazy_import_cycle(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.sub.leaf import VALUE\n")
    (package / "sub" / "leaf.py").write_text("VALUE = 1\n")
    (package / "low.py").write_text("def later():\n    from pkg import high\n    return high\n")
    (package / "high.py").write_text("from . import low\nfrom pkg.sub import leaf\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.high"] == {"pkg.low", "pkg.sub.leaf"} and graph["pkg.sub"] == {"pkg.sub.leaf"}
    assert find_cycle(graph) == ["pkg.high", "pkg.low", "pkg.high"]
    (package / "low.py").write_text("VALUE = 2\n")
    assert find_cycle(import_graph(tmp_path, "pkg")) is None


@pytest.mark.parametrize("package", ["plantlib", "benchmarks"])
def test_no_private_name_is_imported_from_another_module(package: str) -> None:
    offenders = [
        f"{module} imports {name} from {base}"
        for module, file in module_files(ROOT, package).items()
        for base, name in _imported_names(module, file)
        if name and name.startswith("_") and name != "__future__" and base.split(".")[0] in ("plantlib", "benchmarks")
    ]
    assert offenders == []


def test_the_trainer_sits_below_the_launcher_and_front_ends() -> None:
    graph = import_graph(ROOT, "plantlib")

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    above = {
        "plantlib.training.launch",
        "plantlib.cli",
        "plantlib.reporting.runner",
        "plantlib.reporting.notebook",
        "plantlib.reporting.widgets",
    }
    assert reachable("plantlib.training.trainer") & above == set()
    assert reachable("plantlib.distributed") <= {"plantlib.errors"}  # primitives only
