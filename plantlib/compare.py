"""Compare finished runs side by side: size, speed, accuracy and F1 with confidence intervals."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from plantlib.inference import load_model, run_data
from plantlib.models import offline_backbones
from plantlib.runs import read_run_info


def default_backbones() -> list[str]:
    """Every registered backbone whose pretrained weights load on this machine right now (works offline)."""
    return offline_backbones()


def inference_ms_per_image(run_dir: Path, max_images: int = 64, batch_size: int = 32) -> float:
    """Milliseconds per test image for decode + preprocess + forward, batched, after one warm-up batch."""
    loaded = load_model(Path(run_dir))
    files = run_data(loaded).frame("test")["file"].tolist()[:max_images]
    loaded.probabilities(files[:batch_size], batch_size)  # warm-up: first-call allocations, kernel selection
    started = time.perf_counter()
    loaded.probabilities(files, batch_size)
    return 1000 * (time.perf_counter() - started) / max(1, len(files))


def comparison_table(run_dirs: Sequence[Path], measure_speed: bool = True) -> pd.DataFrame:
    """One row per run, from its run.json and test metrics."""
    rows = []
    for run_dir in map(Path, run_dirs):
        info = read_run_info(run_dir)
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        ci = metrics.get("ci95") or {}
        acc_ci = ci.get("accuracy") or [None, None]
        f1_ci = ci.get("f1_macro") or [None, None]
        rows.append(
            {
                "backbone": info.get("backbone"),
                "weights": str(info.get("weights", "")).split(" (")[0],  # the source, without its file path
                "params_millions": info["parameters"]["total"] / 1e6,
                "size_mb": info.get("model_size_mb"),
                "epochs": info.get("epochs_done"),
                "train_seconds": info.get("train_seconds"),
                "seconds_per_epoch": info.get("seconds_per_epoch"),
                "infer_ms_per_image": inference_ms_per_image(run_dir) if measure_speed else float("nan"),
                "accuracy": metrics["accuracy"],
                "accuracy_ci_low": acc_ci[0],
                "accuracy_ci_high": acc_ci[1],
                "f1": metrics["f1"],
                "f1_ci_low": f1_ci[0],
                "f1_ci_high": f1_ci[1],
                "run_dir": str(run_dir),
            }
        )
    return pd.DataFrame(rows)
