"""Notebooks: committed clean, parameters documented and validated, and runnable headlessly."""

import json
from pathlib import Path

import papermill
import pytest
from papermill.exceptions import PapermillExecutionError

from plantlib.config import RunConfig
from plantlib.reporting.notebook import notebook_paths
from plantlib.reporting.runner import NOTEBOOKS, kernel_name

NOTEBOOK_FILES = notebook_paths()


def test_the_numbered_notebooks_exist() -> None:
    assert [p.stem for p in NOTEBOOK_FILES] == list(NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebooks_are_committed_without_outputs(path: Path) -> None:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_first_code_cell_declares_typed_documented_parameters(path: Path) -> None:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    first_code = next(c for c in cells if c["cell_type"] == "code")
    assert "parameters" in first_code["metadata"].get("tags", [])
    declared = papermill.inspect_notebook(str(path))
    lines = [line for line in "".join(first_code["source"]).splitlines() if line.strip()]
    assert len(declared) == len(lines), "every parameter line must parse (no '=' inside comments)"
    defaults = RunConfig()
    for name, info in declared.items():
        assert info["inferred_type_name"] in {"str", "int", "float", "bool"} and info["help"], name
        shorter_schedule = path.stem in {"04_compare_backbones", "05_tune", "06_audit"} and name == "epochs"
        if hasattr(defaults, name) and not shorter_schedule:
            value = eval(info["default"])
            if value == "":
                value = None  # notebooks write None as "" (papermill parameters are plain literals)
            expected = None if name in {"data_dir", "output_dir"} else getattr(defaults, name)  # "": the default place
            assert value == expected, f"{path.stem}.{name} drifted from RunConfig"


def test_an_unknown_parameter_fails_inside_the_notebook(tmp_path: Path) -> None:
    with pytest.raises(PapermillExecutionError, match=r"unknown parameter\(s\) 'epoch' for notebook 01_explore"):
        papermill.execute_notebook(
            str(NOTEBOOK_FILES[0]),
            str(tmp_path / "out.ipynb"),
            parameters={"epoch": 3},
            kernel_name=kernel_name(),
            progress_bar=False,
            cwd=str(NOTEBOOK_FILES[0].parent),
        )


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebooks_are_valid_nbformat_with_cell_ids(path: Path) -> None:
    import nbformat

    notebook = nbformat.read(str(path), as_version=4)
    nbformat.validate(notebook)
    ids = [cell.get("id") for cell in notebook.cells]
    assert all(ids) and len(set(ids)) == len(ids), ids  # missing ids make nbformat warn on every report
