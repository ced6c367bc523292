"""Does temperature scaling make the probabilities honest, and do conformal sets keep their coverage?

Built-in data: the default recipe and deliberately miscalibrated short, low-resolution recipes, each trained once
(a run of the same recipe under artifacts/bench/runs is reused). Per recipe: the temperature fitted on the
validation split, test ECE and log loss before and after with 95% intervals, and the paired log-loss verdict
(`plantlib.evaluation.calibration.CALIBRATION_RULE`); then 90% conformal sets on the test split (the scores stored
in best.pt), and averaged over random calibration/test re-splits of the pooled validation + test predictions,
overall and per class. Synthetic: how often the verdict claims a change for a model that is already calibrated
(T fitted on one draw, judged on another: A/A), and how often it finds the gain on an over-confident one.

    python -m benchmarks.calibration [--splits 200] [--draws 1000] [--recipes default,mixup-96px,head-64px]
                                     [--cv-recipes mixup-96px] [--folds 5]

A recipe in --cv-recipes is also cross-validated: pooled out-of-fold ECE and log loss before/after (n = the pool,
each fold's T fitted on its own early-stopping part), and conformal coverage over re-splits of those predictions.

Writes artifacts/bench/calibration.md; training takes a few minutes per recipe on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import softmax

from benchmarks.measure import BENCH_DIR, bench_config
from benchmarks.verdicts import markdown_table
from plantlib.evaluation.calibration import (
    apply_temperature,
    fit_temperature,
    log_loss_verdict,
    uncalibrated_probabilities,
)
from plantlib.evaluation.conformal import DEFAULT_COVERAGE, resplit_coverage
from plantlib.evaluation.metrics import arrays_from_predictions, proportion_ci, with_ci
from plantlib.inference.predictor import load_model, run_data
from plantlib.io import write_text
from plantlib.runs import RunDir, list_runs

RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "mixup-96px": {"image_size": 96, "epochs": 2, "mixup_alpha": 0.4, "cutmix_alpha": 1.0},
    "head-64px": {"image_size": 64, "epochs": 2, "finetune": "head", "learning_rate": 1e-2},
}


def recipe_run(changes: dict[str, Any]) -> Path:
    """The newest finished run of this recipe under artifacts/bench/runs (calibrated), trained when there is none."""
    wanted = bench_config(**changes).recipe()
    for run in reversed(list_runs(BENCH_DIR / "runs")):
        folder = RunDir(run)
        if folder.status() == "finished" and folder.read_config().recipe() == wanted:
            metrics = folder.read_metrics() or {}
            if "uncalibrated" in metrics:
                return run
    from plantlib.training.trainer import Trainer

    return Trainer.build(bench_config(tracking="off", **changes), show_progress=False).fit().run_dir


def cv_rows(name: str, folds: int, splits: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pooled out-of-fold calibration of a `folds`-fold CV of the recipe (each fold's T fitted on its own
    early-stopping split, n = the pool), and 90% sets over calibration/test re-splits of those predictions, which
    no model selection touched. Finished CVs under artifacts/bench/cv are reused (content key)."""
    import torch

    from plantlib.evaluation.calibration import compare_calibration
    from plantlib.experiments.cv import cross_validate

    config = bench_config(tracking="off", **RECIPES[name]).replace(output_dir=str(BENCH_DIR / "cv"))
    result = cross_validate(config, folds=folds, quiet=True, show_progress=False)
    before, after, targets = [], [], []
    classes = [column[2:] for column in result.oof.columns if column.startswith("p_")]
    for row in result.folds.itertuples():
        payload = torch.load(Path(row.run_dir) / "best.pt", map_location="cpu", weights_only=True)
        part = result.oof[(result.oof["fold"] == row.fold) & (result.oof["repeat"] == row.repeat)]
        y, probs = arrays_from_predictions(part, classes)
        after.append(probs)
        before.append(uncalibrated_probabilities(probs, (payload.get("calibration") or {}).get("temperature", 1.0)))
        targets.append(y)
    y, raw, calibrated = np.concatenate(targets), np.concatenate(before), np.concatenate(after)
    summary = compare_calibration(y, raw, calibrated)
    change = summary["log_loss_change"]
    low, high = change["ci95"]
    calibration_row = {
        "recipe": f"{name}, {folds}-fold CV pooled",
        "n": summary["n"],
        **{
            f"{key} {when}": with_ci(summary[when][key], summary[when]["ci95"][key])
            for key in ("ece", "log_loss")
            for when in ("before", "after")
        },
        "log-loss change (95% CI)": f"{change['difference']:+.3f} ({low:+.3f} to {high:+.3f})",
        "verdict": change["verdict"],
    }
    coverage = resplit_coverage(calibrated, y, DEFAULT_COVERAGE, splits=splits, seed=0)
    set_row = {
        "recipe": f"{name}, {folds}-fold CV pooled",
        "re-splits": splits,
        "n (cal / test)": f"{coverage['n_calibration']} / {coverage['n_test']}",
        "coverage (mean ± se)": f"{coverage['coverage']:.4f} ± {coverage['coverage_sem']:.4f}",
        "mean set size": f"{coverage['mean_set_size']:.3f} ± {coverage['mean_set_size_sem']:.4f}",
        **{f"coverage {classes[k]}": f"{v['coverage']:.3f}" for k, v in coverage["per_class"].items()},
    }
    return calibration_row, set_row


def recipe_row(name: str, run: Path) -> dict[str, Any]:
    """Test-split calibration figures of one run, from its metrics.json."""
    folder = RunDir(run)
    metrics = folder.read_metrics()
    before, calibration = metrics["uncalibrated"], metrics["calibration"]
    targets, probs = arrays_from_predictions(folder.read_predictions(), metrics["class_names"])
    raw = uncalibrated_probabilities(probs, calibration["temperature"])
    change = log_loss_verdict(targets, raw, probs)  # recomputed: the rule of this version, whatever the run recorded
    ci = metrics["ci95"]
    low, high = change["ci95"]
    return {
        "recipe": name,
        "T (val n)": f"{calibration['temperature']:.3f} ({calibration['n']})",
        "test n": metrics["n"],
        "accuracy": with_ci(metrics["accuracy"], ci["accuracy"]),
        "ECE before": with_ci(before["ece"], before["ci95"]["ece"]),
        "ECE after": with_ci(metrics["ece"], ci["ece"]),
        "log loss before": with_ci(before["log_loss"], before["ci95"]["log_loss"]),
        "log loss after": with_ci(metrics["log_loss"], ci["log_loss"]),
        "log-loss change (95% CI)": f"{change['difference']:+.3f} ({low:+.3f} to {high:+.3f})",
        "verdict": change["verdict"],
    }


def set_rows(name: str, run: Path, splits: int) -> list[dict[str, Any]]:
    """90% sets: on the test split with the stored scores, and over re-splits of pooled val + test predictions."""
    metrics = RunDir(run).read_metrics()
    stored = metrics["prediction_sets"]
    loaded = load_model(run)
    data = run_data(loaded)
    rows = pd.concat([data.frame("val"), data.frame("test")])
    probs = loaded.probabilities(rows["file"].tolist())
    targets = rows["target"].to_numpy()
    resplit = resplit_coverage(probs, targets, DEFAULT_COVERAGE, splits=splits, seed=0)
    out = [
        {
            "recipe": name,
            "images": "test split (stored val scores)",
            "n": f"{stored['n']} (cal {stored['n_calibration']})",
            "coverage": with_ci(stored["coverage"], stored["coverage_ci95"]),
            "mean set size": with_ci(stored["mean_set_size"], stored["mean_set_size_ci95"]),
            "single-label sets": f"{stored['single_label_share']:.3f}",
        }
    ]
    for label, part in [("all", resplit), *((loaded.class_names[k], v) for k, v in resplit["per_class"].items())]:
        out.append(
            {
                "recipe": name,
                "images": f"{splits} re-splits, {label}",
                "n": f"{resplit['n_test']} test / {resplit['n_calibration']} cal per split",
                "coverage": f"{part['coverage']:.3f} ± {part['coverage_sem']:.3f} (single splits "
                f"{part['coverage_range95'][0]:.3f}–{part['coverage_range95'][1]:.3f})",
                "mean set size": f"{part['mean_set_size']:.3f} ± {part['mean_set_size_sem']:.3f}",
                "single-label sets": "",
            }
        )
    return out


def synthetic_rows(draws: int, n: int = 60, seed: int = 0) -> list[dict[str, Any]]:
    """How often the paired verdict claims a log-loss change: A/A (a calibrated model) and an over-confident one."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, sharpen in (("A/A: already calibrated", 1.0), ("over-confident (logits × 3)", 3.0)):
        improvements = rises = 0
        for draw in range(draws):
            logits = rng.normal(scale=2.0, size=(2 * n, 2))
            labels = (softmax(logits, axis=1).cumsum(axis=1) > rng.random((2 * n, 1))).argmax(axis=1)
            shown = sharpen * logits
            try:
                temperature = fit_temperature(shown[:n], labels[:n])
            except Exception:  # a draw with every calibration image right: nothing to fit, no claim
                continue
            verdict = log_loss_verdict(
                labels[n:], apply_temperature(shown[n:], 1.0), apply_temperature(shown[n:], temperature), seed=draw
            )
            improvements += verdict["claimed"] and verdict["difference"] < 0
            rises += verdict["claimed"] and verdict["difference"] > 0
        low, high = proportion_ci(improvements, draws)
        rise_low, rise_high = proportion_ci(rises, draws)
        rows.append(
            {
                "scenario": label,
                "draws": draws,
                "n (cal / test)": f"{n} / {n}",
                "improvement claimed": f"{improvements / draws:.3f} ({low:.3f}–{high:.3f})",
                "rise claimed": f"{rises / draws:.3f} ({rise_low:.3f}–{rise_high:.3f})",
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=200, help="calibration/test re-splits for coverage")
    parser.add_argument("--draws", type=int, default=1000, help="synthetic draws for the verdict's error rate")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of: {', '.join(RECIPES)}")
    parser.add_argument("--cv-recipes", default="mixup-96px", help="recipes also cross-validated (pooled n); '' none")
    parser.add_argument("--folds", type=int, default=5, help="folds of those cross-validations")
    args = parser.parse_args()
    started = time.perf_counter()
    synthetic = pd.DataFrame(synthetic_rows(args.draws))
    print(markdown_table(synthetic), flush=True)
    recipes, sets = [], []
    for name in args.recipes.split(","):
        run = recipe_run(RECIPES[name])
        recipes.append(recipe_row(name, run))
        sets += set_rows(name, run, args.splits)
        print(f"{name}: {run}", flush=True)
    pooled = [cv_rows(name, args.folds, args.splits * 10) for name in filter(None, args.cv_recipes.split(","))]
    sections = [
        f"# Calibration and conformal sets ({platform.node()}, {time.perf_counter() - started:.0f} s wall)",
        "## Temperature scaling on the test split (95% CIs)",
        markdown_table(pd.DataFrame(recipes)),
        "## Temperature scaling on pooled out-of-fold predictions (each fold's T from its own validation part)",
        markdown_table(pd.DataFrame([row for row, _ in pooled])) if pooled else "(none: --cv-recipes '')",
        f"## {DEFAULT_COVERAGE:.0%} conformal sets on pooled out-of-fold predictions, re-split calibration/test",
        markdown_table(pd.DataFrame([row for _, row in pooled])) if pooled else "(none)",
        f"## {DEFAULT_COVERAGE:.0%} conformal prediction sets",
        markdown_table(pd.DataFrame(sets)),
        "## The paired log-loss verdict on synthetic models (exact 95% CIs of the rate)",
        markdown_table(synthetic),
    ]
    text = "\n\n".join(sections) + "\n"
    print(text)
    write_text(BENCH_DIR / "calibration.md", text)


if __name__ == "__main__":
    main()
