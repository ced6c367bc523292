"""Report parameters are validated against every notebook that declares them before any notebook starts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plantlib import reports
from plantlib.errors import ConfigError
from tests.conftest import write_dataset


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("report-data") / "images", {"ant": 10, "bee": 10})


def test_report_parameters_are_checked_before_any_notebook_runs(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    monkeypatch.setattr(reports, "run_notebook", lambda name, *args, **kwargs: ran.append(name))
    bad = [
        ({"epochs": "abc"}, r"02_train: parameter epochs='abc' has type str; expected int"),
        ({"epochs": -3}, r"02_train: epochs=-3 is not allowed; use 1 or more"),
        ({"backbone": "nope"}, r"02_train: unknown backbone 'nope'; choose one of: .*resnet18"),
        ({"backbones": "resnet18,nope"}, r"04_compare_backbones: unknown backbone 'nope'"),
        ({"n_mistakes": "many"}, r"03_evaluate: parameter n_mistakes='many' has type str; expected int"),
        ({"02_train": {"learning_rate": 0}}, r"02_train: learning_rate=0(\.0)? is not allowed"),
    ]
    for parameters, message in bad:
        with pytest.raises(ConfigError, match=message):
            reports.run_reports({"data_dir": str(images), **parameters}, fast=True, out_dir=tmp_path / "reports")
    assert ran == [] and not (tmp_path / "reports").exists()

    result = subprocess.run(
        [sys.executable, "-m", "plantlib", "report", "--fast", "-p", f"data_dir={images}", "-p", "epochs=abc"],
        capture_output=True,
        text=True,
        env={**os.environ, "PLANTLIB_ROOT": str(tmp_path)},
    )
    assert result.returncode == 2 and "running" not in result.stdout
    assert result.stderr.strip() == (
        "plantlib report: error: 02_train: parameter epochs='abc' has type str; expected int "
        "(passes over the training set)"
    )
    assert not (tmp_path / "artifacts" / "reports").exists()
