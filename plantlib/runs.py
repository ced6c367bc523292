"""Run directories: one per run, never shared, found again by notebooks and the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from plantlib.checkpoint import BEST_CHECKPOINT
from plantlib.errors import PlantlibError
from plantlib.io import read_json, write_json
from plantlib.paths import artifacts_dir
from plantlib.processes import process_is_alive

RUN_FILE = "run.json"
CV_FILE = "cv.json"  # marks a cross-validation directory (plantlib.experiments.cv writes it)


def is_cv_dir(path: str | Path) -> bool:
    """Whether `path` is a cross-validation directory (its fold models stand for it as an ensemble)."""
    return (Path(path) / CV_FILE).is_file()


def read_cv_info(cv_dir: str | Path) -> dict[str, Any]:
    """A cross-validation directory's cv.json: its status, settings and the config its folds train."""
    return json.loads((Path(cv_dir) / CV_FILE).read_text(encoding="utf-8"))


def runs_dir(output_dir: str | Path | None = None) -> Path:
    return Path(output_dir) if output_dir else artifacts_dir() / "runs"


def new_unique_dir(parent: Path, stem: str) -> Path:
    """`parent/stem`, or `stem-2`, `stem-3`, …: created exclusively, so two jobs started together never share one."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 10_000):
        candidate = parent / (stem if attempt == 1 else f"{stem}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise PlantlibError(f"could not create a new directory {stem} under {parent}")


def new_run_dir(backbone: str, output_dir: str | Path | None = None) -> Path:
    """`<runs>/<YYYYmmdd-HHMMSS>-<backbone>[-N]`, created exclusively so two runs started together differ."""
    return new_unique_dir(runs_dir(output_dir), f"{time.strftime('%Y%m%d-%H%M%S')}-{backbone}")


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    """`run.json`: status (running / interrupted / finished), timings and headline metrics; while running, also
    the process that runs it (`processes.this_process()`), so a reader can tell a run that died without a word."""
    write_json(Path(run_dir) / RUN_FILE, info)


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """`run.json` as the run stands now: a "running" run whose process is gone (killed with -9, a crashed
    machine, its pid since reused by another program) reads as "interrupted". The file itself is left as it is:
    a resumed run may be writing it at this moment."""
    info = read_json(Path(run_dir) / RUN_FILE)
    if info.get("status") == "running" and not process_is_alive(info.get("process")):
        info["status"] = "interrupted"
        info["interrupted_because"] = "its process ended without recording how (killed, or the machine stopped)"
    return info


def run_status(run_dir: Path) -> str:
    """A run's status as `read_run_info` reads it ("running", "finished", "interrupted", ...; "" before it started)."""
    return str(read_run_info(run_dir).get("status", ""))


def list_runs(output_dir: str | Path | None = None) -> list[Path]:
    """Run directories, oldest first (the name starts with the start time)."""
    parent = runs_dir(output_dir)
    if not parent.is_dir():
        return []
    return sorted(p for p in parent.iterdir() if p.is_dir() and (p / "config.json").is_file())


def latest_run(output_dir: str | Path | None = None, finished: bool = True) -> Path:
    """The newest run (with a best checkpoint when `finished`), or an error saying how to make one."""
    for run in reversed(list_runs(output_dir)):
        if not finished or (read_run_info(run).get("status") == "finished" and (run / BEST_CHECKPOINT).is_file()):
            return run
    raise PlantlibError(
        f"no {'finished ' if finished else ''}run found under {runs_dir(output_dir)}; "
        "train one with `plantlib train` or the 02_train notebook"
    )
