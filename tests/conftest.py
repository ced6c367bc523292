"""Shared fixtures: an isolated project root and small synthetic image folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from plantlib.config import RunConfig
from plantlib.paths import TOOL_CACHE_VARIABLES

CHECKOUT = Path(__file__).resolve().parents[1]
REAL_MIRROR = CHECKOUT.parent / "shared" / "data" / "dandelion-vs-grass"
NETGUARD = Path(__file__).resolve().parent / "helpers" / "netguard"


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
SESSION_ROOT: Path | None = None  # this process's temporary project root, set in pytest_configure


def pytest_configure(config: pytest.Config) -> None:
    """Session-wide isolation, set before any fixture runs (module fixtures run before the per-test one below):
    a temporary project root and tool caches, and no tracking unless a test starts its own store."""
    global SESSION_ROOT
    session_root = SESSION_ROOT = Path(tempfile.mkdtemp(prefix="plantlib-tests-"))
    (session_root / "data").mkdir()
    os.environ["PLANTLIB_ROOT"] = str(session_root)
    for variable, name in TOOL_CACHE_VARIABLES.items():
        os.environ[variable] = str(session_root / "tool-caches" / name)
    os.environ["PLANTLIB_TRACKING"] = "off"
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session root goes with the session (each xdist worker and the controller made their own)."""
    if SESSION_ROOT is not None:
        shutil.rmtree(SESSION_ROOT, ignore_errors=True)


IGNORED_IN_CHECKOUT = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}


def checkout_files() -> dict[str, float]:
    """Every file of the checkout with its modification time, outside folders Python and git tools keep."""
    files: dict[str, float] = {}
    for folder, subfolders, names in os.walk(CHECKOUT):
        subfolders[:] = [d for d in subfolders if d not in IGNORED_IN_CHECKOUT]
        for name in names:
            path = Path(folder) / name
            files[str(path.relative_to(CHECKOUT))] = path.stat().st_mtime
    return files


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_untouched() -> Iterator[None]:
    """Tests write under temporary folders only: the run fails if a file of the checkout appeared or changed."""
    before = checkout_files()
    yield
    after = checkout_files()
    touched = sorted(name for name, mtime in after.items() if before.get(name) != mtime)
    assert not touched, f"the tests wrote into the checkout: {touched[:20]}"


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


@pytest.fixture(scope="module", autouse=True)
def module_scratch_removed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Folders a test module made under the session's temporary base (its module fixtures' models and runs) are
    deleted when the module ends: checkpoints add up to gigabytes over the suite, more than a CI disk may hold."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    for entry in set(base.iterdir()) - before:
        shutil.rmtree(entry, ignore_errors=True)


@pytest.fixture(autouse=True)
def isolated_project(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own project root, so nothing touches the checkout's data/ or artifacts/; it is deleted
    after the test (like `tmp_path` under tmp_path_retention_policy = "failed")."""
    root = tmp_path_factory.mktemp("project")
    (root / "data").mkdir()
    monkeypatch.setenv("PLANTLIB_ROOT", str(root))
    monkeypatch.setenv("PLANTLIB_PROGRESS", "off")
    monkeypatch.setenv("PLANTLIB_TRACKING", "off")  # tests that track turn it on against their own store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Two classes of 12 images each."""
    return write_dataset(tmp_path / "tiny", {"cat": 12, "dog": 12})


def guarded_environment(tmp: Path) -> dict[str, str | None]:
    """Variables under which any outbound connection (DNS included) is refused and logged to tmp/network.log,
    with HOME an empty folder (tmp/home) and no XDG folder elsewhere: a run must leave both empty."""
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(filter(None, [str(NETGUARD), os.environ.get("PYTHONPATH")]))
    env: dict[str, str | None] = {
        "HOME": str(home),
        "PYTHONPATH": path,
        "PLANTLIB_NETGUARD_LOG": str(tmp / "network.log"),
    }
    for variable in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_RUNTIME_DIR", *TOOL_CACHE_VARIABLES):
        env[variable] = None  # unset: the run chooses its own places
    return env


def run_cli(
    *args: str, root: Path | None = None, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess:
    """`python -m plantlib ARGS` as a user runs it (optionally with its own project root and variables; a
    variable given as None is unset)."""
    merged = {**os.environ, "PYTHONWARNINGS": "default", **(env or {})}
    env = {name: value for name, value in merged.items() if value is not None}
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
