"""Where the project keeps data and artifacts.

Everything is resolved against one project root so notebooks (run from `notebooks/`), the CLI and tests agree.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_ENV = "PLANTLIB_ROOT"
BUILTIN_DATASET = "dandelion-vs-grass"


def project_root() -> Path:
    """The project folder: `$PLANTLIB_ROOT`, else the checkout holding this package, else the working dir."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV]).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "plantlib").is_dir():
        return checkout
    return Path.cwd().resolve()


def data_root() -> Path:
    return project_root() / "data"


def manifest_path() -> Path:
    """The committed manifest of the built-in dataset."""
    return data_root() / "manifest.csv"


def builtin_data_dir() -> Path:
    return data_root() / BUILTIN_DATASET


def cache_dir() -> Path:
    """Scan results and other derived data that can always be rebuilt."""
    return data_root() / ".cache"


def splits_dir() -> Path:
    return data_root() / "splits"


def artifacts_dir() -> Path:
    return project_root() / "artifacts"


def notebooks_dir() -> Path:
    """The numbered notebooks shipped with the checkout (independent of `$PLANTLIB_ROOT`)."""
    return Path(__file__).resolve().parents[1] / "notebooks"


def reports_dir() -> Path:
    return artifacts_dir() / "reports"
