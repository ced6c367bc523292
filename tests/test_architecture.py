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


# The package's layers, lowest first: a module may import from its own layer and the layers below it, never
# from a layer above. The ground floor is every top-level module but the front ends (cli, __main__).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("ground floor",),
    ("data",),
    ("models",),
    ("evaluation",),
    ("training", "inference"),
    ("experiments",),
    ("reporting",),
    ("cli", "__main__"),
)
# Upward arrows that are lazy (inside a function) and justified, each with its reason.
UPWARD_EXCEPTIONS = {
    # RunConfig validates `backbone` and `head` against the registry and heads, which live with the models.
    ("plantlib.config", "plantlib.models.backbones"),
}


def layer_of(module: str) -> int:
    """The index in LAYERS of a plantlib module: its sub-package's, else its front end's, else the ground floor's."""
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    if not (name and (ROOT / "plantlib" / name).is_dir()) and name not in ("cli", "__main__"):
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


def test_imports_point_down_the_layers() -> None:
    graph = import_graph(ROOT, "plantlib")
    assert {layer_of(module) for module in graph} == set(range(len(LAYERS)))  # every layer has modules
    arrows = upward_arrows(graph)
    assert arrows == [], "imports from a higher layer (move the code down, or pass it in):\n" + "\n".join(arrows)


def test_an_exempt_upward_import_stays_lazy() -> None:
    """An exemption covers an import inside a function only: at module level it would load the layer above."""
    for module, target in UPWARD_EXCEPTIONS:
        tree = ast.parse(module_files(ROOT, "plantlib")[module].read_text(encoding="utf-8"))
        eager = {
            f"{node.module}.{alias.name}" if isinstance(node, ast.ImportFrom) else alias.name
            for node in tree.body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in node.names
        }
        assert not [name for name in eager if name.startswith(target)], f"{module} imports {target} at module level"


def test_the_layer_check_finds_an_upward_import() -> None:
    graph = {
        "plantlib.io": set(),
        "plantlib.models.fusion": {"plantlib.io", "plantlib.data.scan"},  # down: fine
        "plantlib.data.scan": {"plantlib.training.trainer"},  # up: data reaches training
        "plantlib.training.trainer": {"plantlib.inference.engine", "plantlib.experiments.tracking"},
        "plantlib.inference.engine": set(),
        "plantlib.experiments.tracking": {"plantlib.cli"},
        "plantlib.cli": {"plantlib.reporting.runner"},
        "plantlib.reporting.runner": set(),
    }
    assert upward_arrows(graph) == [
        "plantlib.data.scan -> plantlib.training.trainer",
        "plantlib.experiments.tracking -> plantlib.cli",
        "plantlib.training.trainer -> plantlib.experiments.tracking",
    ]


def test_the_trainer_sits_below_the_launcher_and_front_ends() -> None:
    """Within training, the trainer never reaches the launcher; the distributed primitives reach nothing."""
    graph = import_graph(ROOT, "plantlib")

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    assert "plantlib.training.launch" not in reachable("plantlib.training.trainer")
    assert reachable("plantlib.distributed") <= {"plantlib.errors"}  # primitives only


MAX_FUNCTION_LINES = 60  # from the def line to the last line
LONG_FUNCTIONS_ALLOWED = {"plantlib/cli.py::build_parser"}  # one flat list of argparse declarations


def long_functions(root: Path, package: str, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """`path::Qualified.name` -> lines, for every function or method (nested ones too) longer than `limit`."""
    found = {}

    def visit(node: ast.AST, where: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, where, prefix)
                continue
            name = f"{prefix}{child.name}"
            lines = (child.end_lineno or child.lineno) - child.lineno + 1
            if not isinstance(child, ast.ClassDef) and lines > limit:
                found[f"{where}::{name}"] = lines
            visit(child, where, f"{name}.")

    for file in sorted((root / package).rglob("*.py")):
        visit(ast.parse(file.read_text(encoding="utf-8")), file.relative_to(root).as_posix(), "")
    return found


def test_no_function_is_longer_than_60_lines() -> None:
    too_long = long_functions(ROOT, "plantlib")
    assert not LONG_FUNCTIONS_ALLOWED - set(too_long)  # the scan sees them (else drop the exemption)
    offenders = [f"{name} ({lines} lines)" for name, lines in too_long.items() if name not in LONG_FUNCTIONS_ALLOWED]
    assert offenders == [], f"split into named helpers of {MAX_FUNCTION_LINES} lines or fewer:\n" + "\n".join(offenders)


def test_the_length_check_counts_from_def_to_last_line_and_sees_methods(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    body = [f"x{i} = {i}" for i in range(59)]
    function = "\n".join(["def fits():", *(f"    {line}" for line in body)])
    long = "\n".join(["def long():", *(f"    {line}" for line in body), "    return 1"])
    method = "\n".join(
        ["class Thing:", "    def method(self):", *(f"        {line}" for line in body), "        return 2"]
    )
    (tmp_path / "pkg" / "mod.py").write_text("\n\n".join([function, long, method]) + "\n")
    assert long_functions(tmp_path, "pkg") == {"pkg/mod.py::long": 61, "pkg/mod.py::Thing.method": 61}
