"""Shared fixtures: an isolated project root and small synthetic image folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plantlib.config import RunConfig

REAL_MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data" / "dandelion-vs-grass"


def real_mirror() -> Path | None:
    """The built-in dataset's mirror: $PLANTLIB_DATA_SOURCE when it is a folder, else ../shared/…."""
    env = os.environ.get("PLANTLIB_DATA_SOURCE")
    for candidate in (Path(env) if env else None, REAL_MIRROR):
        if candidate is not None and candidate.is_dir():
            return candidate
    return None


# .ci/run sets this: there a missing mirror or browser fails the tests that need it instead of skipping them, so a
# green CI run means every test ran.
REQUIRE_ALL = os.environ.get("PLANTLIB_REQUIRE_ALL") == "1"


def pytest_configure(config: pytest.Config) -> None:
    """No test records runs in a tracking store unless it starts its own (module fixtures run before the
    per-test isolation below, so this is set for the whole session)."""
    os.environ["PLANTLIB_TRACKING"] = "off"
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def needs(available: bool, reason: str) -> pytest.MarkDecorator:
    """Skip when `available` is false, except under PLANTLIB_REQUIRE_ALL=1, where the test fails instead."""
    if available or not REQUIRE_ALL:
        return pytest.mark.skipif(not available, reason=reason)
    return pytest.mark.missing_requirement(reason=reason)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    mark = item.get_closest_marker("missing_requirement")
    if mark is not None:  # before any fixture is built: a missing mirror must not look like a broken fixture
        pytest.fail(f"{mark.kwargs['reason']}; PLANTLIB_REQUIRE_ALL=1 does not allow skipping", pytrace=False)


requires_mirror = needs(real_mirror() is not None, "built-in dataset mirror not found (set PLANTLIB_DATA_SOURCE)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
requires_chromium = needs(CHROMIUM is not None, "chromium not installed (make test / .ci/run install it)")


def pattern_image(seed: int, size: tuple[int, int] = (96, 72)) -> Image.Image:
    """A smooth random picture: distinct per seed, so perceptual hashes of different seeds differ."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)


def write_dataset(root: Path, counts: dict[str, int], seed: int = 0, size: tuple[int, int] = (96, 72)) -> Path:
    """A folder-per-class dataset of JPEGs with distinct content."""
    for class_index, (label, count) in enumerate(sorted(counts.items())):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pattern_image(seed * 100_000 + class_index * 1000 + i, size).save(folder / f"{i:04d}.jpg", quality=90)
    return root


@pytest.fixture(autouse=True)
def isolated_project(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own project root, so nothing touches the checkout's data/ or artifacts/."""
    root = tmp_path_factory.mktemp("project")
    (root / "data").mkdir()
    monkeypatch.setenv("PLANTLIB_ROOT", str(root))
    monkeypatch.setenv("PLANTLIB_PROGRESS", "off")
    monkeypatch.setenv("PLANTLIB_TRACKING", "off")  # tests that track turn it on against their own store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Two classes of 12 images each."""
    return write_dataset(tmp_path / "tiny", {"cat": 12, "dog": 12})


def run_cli(*args: str, root: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m plantlib ARGS` as a user runs it (optionally with its own project root and variables)."""
    env = {**os.environ, "PYTHONWARNINGS": "default", **(env or {})}
    if root is not None:
        env["PLANTLIB_ROOT"] = str(root)
    return subprocess.run(
        [sys.executable, "-m", "plantlib", *args], capture_output=True, text=True, env=env, check=False
    )


def tiny_config(data_dir: Path, runs: Path, **changes) -> RunConfig:
    """A run small enough for tests: 64 px, batches of 8, 3 epochs, half the images held out."""
    values = {
        "data_dir": str(data_dir),
        "output_dir": str(runs),
        "image_size": 64,
        "batch_size": 8,
        "epochs": 3,
        "val_fraction": 0.25,
        "test_fraction": 0.25,
        "early_stopping_patience": None,
    }
    return RunConfig(**{**values, **changes})
