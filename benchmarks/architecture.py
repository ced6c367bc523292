"""The package's shape in figures: modules, import arrows and layers; the longest functions; the Trainer's size.

`python -m benchmarks.architecture` prints them (the closing figures of an architecture change come from here);
`tests/test_architecture.py` asserts the rules on the same graph: no import cycle, no arrow up the layers, no
function over 60 lines.
"""

from __future__ import annotations

import ast
import functools
import statistics
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LONGEST_FUNCTION = 60  # lines, def to last line; cli.py's argument parser is the one exception
EXEMPT_FUNCTIONS = {"plantlib.cli.build_parser"}


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` under `root` (`pkg/__init__.py` is `pkg`)."""
    modules = {}
    for file in sorted((root / package).rglob("*.py")):
        parts = list(file.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = file
    return modules


def imported_names(module: str, file: Path) -> Iterator[tuple[str, str | None]]:
    """(module imported from, name imported or None) for every import statement in `file`, lazy ones included."""
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
        for base, name in imported_names(module, file):
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


def layer_count(graph: dict[str, set[str]]) -> int:
    """Modules on the longest import chain (the graph has no cycle)."""

    @functools.cache
    def depth(module: str) -> int:
        return 1 + max((depth(target) for target in graph[module]), default=0)

    return max(depth(module) for module in graph)


def function_lengths(root: Path, package: str) -> list[tuple[int, str]]:
    """(lines, "module.function") for every function and method, longest first."""
    rows = []
    for module, file in module_files(root, package).items():
        tree = ast.parse(file.read_text(encoding="utf-8"))
        for parent in ast.walk(tree):
            for node in ast.iter_child_nodes(parent):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    owner = f"{parent.name}." if isinstance(parent, ast.ClassDef) else ""
                    rows.append((node.end_lineno - node.lineno + 1, f"{module}.{owner}{node.name}"))
    return sorted(rows, reverse=True)


def class_size(file: Path, name: str) -> tuple[int, int]:
    """(lines, attributes its __init__ sets on self) of class `name` in `file`."""
    for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef) and node.name == name:
            init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            attributes = {
                target.attr
                for statement in ast.walk(init)
                for target in getattr(statement, "targets", [getattr(statement, "target", None)])
                if isinstance(target, ast.Attribute) and getattr(target.value, "id", None) == "self"
            }
            return node.end_lineno - node.lineno + 1, len(attributes)
    raise LookupError(f"no class {name} in {file}")


def main() -> None:
    graph = import_graph(ROOT, "plantlib")
    arrows = sum(len(targets) for targets in graph.values())
    print(f"modules {len(graph)}, import arrows {arrows}, layers (longest import chain) {layer_count(graph)}")
    print(f"import cycle: {find_cycle(graph) or 'none'}")
    lengths = function_lengths(ROOT, "plantlib")
    print(f"functions {len(lengths)}, median {statistics.median(n for n, _ in lengths):.0f} lines")
    over = [(n, name) for n, name in lengths if n > LONGEST_FUNCTION and name not in EXEMPT_FUNCTIONS]
    print(f"over {LONGEST_FUNCTION} lines (besides {', '.join(sorted(EXEMPT_FUNCTIONS))}): {len(over)}")
    print("longest:")
    for n, name in lengths[:8]:
        print(f"  {n:4d}  {name}")
    modules = module_files(ROOT, "plantlib")
    trainer = modules.get("plantlib.training.trainer") or modules["plantlib.train"]  # before the sub-packages
    lines, attributes = class_size(trainer, "Trainer")
    print(f"Trainer: {lines} lines, {attributes} attributes set in __init__")


if __name__ == "__main__":
    main()
