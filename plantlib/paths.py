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


# The caches of the tools plantlib runs, each kept in data/.cache/tools/ unless the user chose a place.
TOOL_CACHE_VARIABLES = {
    "MPLCONFIGDIR": "matplotlib",  # matplotlib's font list
    "IPYTHONDIR": "ipython",  # the report kernels' IPython profile and history
    "JUPYTER_RUNTIME_DIR": "jupyter-runtime",  # kernel connection files of report runs
}


def use_project_tool_caches() -> None:
    """Point the caches in TOOL_CACHE_VARIABLES into the project, so a run writes nothing in the home folder.

    Applies to this process and what it starts (report kernels, torchrun workers); a variable already set wins.
    """
    for variable, name in TOOL_CACHE_VARIABLES.items():
        if not os.environ.get(variable):
            folder = cache_dir() / "tools" / name
            folder.mkdir(parents=True, exist_ok=True)
            os.environ[variable] = str(folder)


def splits_dir() -> Path:
    return data_root() / "splits"


def artifacts_dir() -> Path:
    return project_root() / "artifacts"


def notebooks_dir() -> Path:
    """The numbered notebooks shipped with the checkout (independent of `$PLANTLIB_ROOT`)."""
    return Path(__file__).resolve().parents[1] / "notebooks"


def reports_dir() -> Path:
    return artifacts_dir() / "reports"
