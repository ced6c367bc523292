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
MAX_FUNCTION_LINES = 60  # from the def line to the last line
LONG_FUNCTIONS_ALLOWED = {"plantlib/cli.py::build_parser"}  # one flat list of argparse declarations


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


# The package's layers, lowest first: a module may import from its own layer and the layers below it, never
# from a layer above. The ground floor is every top-level module but the front ends (cli, __main__).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("ground floor",),
    ("data",),
    ("models",),
    ("evaluation",),
    ("training", "inference"),
    ("experiments", "serving"),
    ("reporting",),
    ("cli", "__main__"),
)
# Upward arrows that are lazy (inside a function) and justified, each with its reason.
UPWARD_EXCEPTIONS = {
    # RunConfig validates `backbone` and `head` against the registry and heads, which live with the models.
    ("plantlib.config", "plantlib.models.backbones"),
}


def layer_of(module: str, root: Path = ROOT) -> int:
    """The index in LAYERS of a plantlib module: its sub-package's, else its front end's, else the ground floor's."""
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    if not (name and (root / "plantlib" / name).is_dir()) and name not in ("cli", "__main__"):
        name = "ground floor"
    for index, names in enumerate(LAYERS):
        if name in names:
            return index
    raise AssertionError(f"{module} is in no layer; add its sub-package to LAYERS")


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module) and (module, target) not in UPWARD_EXCEPTIONS
    ]


def function_lengths(root: Path, package: str) -> dict[str, int]:
    """`path::Qualified.name` -> lines (def line to last line), for every function or method, nested ones too."""
    found = {}

    def visit(node: ast.AST, where: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, where, prefix)
                continue
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                found[f"{where}::{name}"] = (child.end_lineno or child.lineno) - child.lineno + 1
            visit(child, where, f"{name}.")

    for file in sorted((root / package).rglob("*.py")):
        visit(ast.parse(file.read_text(encoding="utf-8")), file.relative_to(root).as_posix(), "")
    return found


def long_functions(root: Path, package: str, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """The functions of `function_lengths` longer than `limit` lines."""
    return {name: lines for name, lines in function_lengths(root, package).items() if lines > limit}


RUN_FILE_NAMES = (
    "config.json",
    "history.json",
    "metrics.json",
    "predictions.csv",
    "run.json",
    "tracking.json",
    "cv.json",
    "folds.csv",
    "oof.csv",
    "split.csv",
    "best.pt",
    "last.pt",
    "best_config.json",
)


def run_file_literals(root: Path, package: str, owner: str = "plantlib/runs.py") -> list[str]:
    """`path:line 'text'` for every string in code (not a docstring) outside `owner` that is a run file's name, or
    ends in one after a `/` or `_` (a path or a prefixed evaluation file built by hand)."""
    found = []
    for file in sorted((root / package).rglob("*.py")):
        where = file.relative_to(root).as_posix()
        if where == owner:
            continue
        tree = ast.parse(file.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docstrings:
                continue
            text = node.value
            if any(text == name or text.endswith(("/" + name, "_" + name)) for name in RUN_FILE_NAMES):
                found.append(f"{where}:{node.lineno} {text!r}")
    return sorted(found)


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
    print(f"arrows up the layers: {upward_arrows(graph) or 'none'}")
    print(f"run files named outside plantlib/runs.py: {run_file_literals(ROOT, 'plantlib') or 'none'}")
    lengths = function_lengths(ROOT, "plantlib")
    print(f"functions {len(lengths)}, median {statistics.median(lengths.values()):.0f} lines")
    over = set(long_functions(ROOT, "plantlib")) - LONG_FUNCTIONS_ALLOWED
    print(f"over {MAX_FUNCTION_LINES} lines (besides {', '.join(sorted(LONG_FUNCTIONS_ALLOWED))}): {len(over)}")
    print("longest:")
    for name, lines in sorted(lengths.items(), key=lambda item: -item[1])[:8]:
        print(f"  {lines:4d}  {name}")
    modules = module_files(ROOT, "plantlib")
    trainer = modules.get("plantlib.training.trainer") or modules["plantlib.train"]  # before the sub-packages
    lines, attributes = class_size(trainer, "Trainer")
    print(f"Trainer: {lines} lines, {attributes} attributes set in __init__")


if __name__ == "__main__":
    main()
