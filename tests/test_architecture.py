"""The package's shape: no import cycles, imports pointing down the layers, no private names shared across
modules, no function over 60 lines, and run files named only by their owner (`plantlib.runs`).

Imports are read from the source (every `import`, also inside functions and TYPE_CHECKING blocks), so a lazy
import that closes a cycle counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from benchmarks.architecture import (
    LAYERS,
    LONG_FUNCTIONS_ALLOWED,
    MAX_FUNCTION_LINES,
    ROOT,
    UPWARD_EXCEPTIONS,
    find_cycle,
    import_graph,
    imported_names,
    layer_of,
    long_functions,
    module_files,
    run_file_literals,
    upward_arrows,
)


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
    """A leading underscore is private to its module; dunders such as `__version__` are public by convention."""
    offenders = [
        f"{module} imports {name} from {base}"
        for module, file in module_files(ROOT, package).items()
        for base, name in imported_names(module, file)
        if name
        and name.startswith("_")
        and not (name.startswith("__") and name.endswith("__"))
        and base.split(".")[0] in ("plantlib", "benchmarks")
    ]
    assert offenders == []


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


def test_only_the_run_directory_owner_names_run_files() -> None:
    """Code outside plantlib/runs.py reaches a run's files through RunDir, CvDir, StudyDir or runs' constants;
    docstrings and messages may name them, a path built from a literal name may not."""
    assert run_file_literals(ROOT, "plantlib") == []


def test_the_run_file_check_finds_a_literal_name(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "runs.py").write_text('CONFIG_FILE = "config.json"\n')  # the owner may
    (tmp_path / "pkg" / "reader.py").write_text(
        '"""Reads config.json (a docstring may say so)."""\n'
        "def read(run_dir, prefix):\n"
        '    """From history.json."""\n'
        '    message = f"{run_dir} has no metrics.json yet"  # a message may name it\n'
        '    return run_dir / "config.json", run_dir / f"{prefix}_predictions.csv", run_dir / "sub/best.pt"\n'
    )
    assert run_file_literals(tmp_path, "pkg", owner="pkg/runs.py") == [
        "pkg/reader.py:5 '_predictions.csv'",
        "pkg/reader.py:5 'config.json'",
        "pkg/reader.py:5 'sub/best.pt'",
    ]
