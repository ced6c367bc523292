"""Does the label audit find wrong labels? Two checks on the built-in dandelion-vs-grass data.

1. Known errors: two diagrams filed under grass (`grass/00000048.jpg`, `grass/00000189.jpg`) that every run calls
   dandelion. Are they in the audit's top 10?
2. Planted noise: 5% of the images get the other label (a label overrides file in a temporary folder, seeded; the
   images are not touched), the cross-validation runs again on the noisy labels, and the audit's suspected issues
   (its default threshold) are scored against the planted flips among the audited images: precision and recall with
   exact 95% intervals, beside the precision a random pick would expect.

    python -m benchmarks.audit [--folds 3] [--epochs 2] [--seed 0] [--share 0.05] [--planted-model probe]

`--planted-model probe` gets the noisy run's out-of-fold probabilities from the linear probe on the same folds
(frozen pretrained backbone + logistic regression, `experiments.probe`: a minute instead of a fine-tuned CV).

The recipe is 04_compare_backbones' report default (efficientnet_lite0, 3 folds x 2 epochs, 224 px). Needs the
built-in data (`plantlib fetch-data`, or $PLANTLIB_DATA_SOURCE). Cross-validations go to artifacts/bench/audit/cv
and are reused by content key; the tables to artifacts/bench/audit.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.measure import BENCH_DIR
from benchmarks.verdicts import markdown_table
from plantlib.config import RunConfig
from plantlib.data import prepare_data
from plantlib.data.overrides import OVERRIDES_FILE
from plantlib.experiments.audit import Audit, audit_cv, detection_scores, issues_table, summary_line
from plantlib.experiments.cv import cross_validate
from plantlib.io import write_text

KNOWN_DIAGRAMS = ("grass/00000048.jpg", "grass/00000189.jpg")
OUT_DIR = BENCH_DIR / "audit"


def recipe(folds_dir: Path, epochs: int, **changes: object) -> RunConfig:
    """04's short recipe, tracked nowhere, with its cross-validations under `folds_dir`."""
    values = {"epochs": epochs, "output_dir": str(folds_dir), "tracking": "off", "label_overrides": ""}
    return RunConfig(**(values | changes))


def plant_flips(config: RunConfig, share: float, seed: int, folder: Path) -> tuple[Path, list[str]]:
    """A label overrides file giving `share` of the images (seeded) the other class; the flipped paths."""
    images = prepare_data(config, show_progress=False).split[["path", "label"]].sort_values("path")
    rng = np.random.default_rng(seed)
    chosen = images.iloc[np.sort(rng.choice(len(images), size=round(share * len(images)), replace=False))]
    classes = sorted(images["label"].unique())
    flipped = chosen.assign(label=[next(c for c in classes if c != label) for label in chosen["label"]])
    path = folder / OVERRIDES_FILE
    write_text(path, flipped[["path", "label"]].to_csv(index=False, lineterminator="\n"))
    return path, flipped["path"].tolist()


def noisy_cv(config: RunConfig, folds: int, model: str) -> Path:
    """The cross-validation directory of `config` (noisy labels) by the fine-tuned recipe or the linear probe."""
    if model == "probe":
        from plantlib.experiments.probe import probe_cross_validate

        return probe_cross_validate(config, folds=folds).cv_dir
    return cross_validate(config, folds=folds, quiet=True).cv_dir


def fmt_ci(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None or ci is None:
        return "–"
    return f"{value:.2f} ({ci[0]:.2f}–{ci[1]:.2f})"


def known_rows(audit: Audit) -> pd.DataFrame:
    """Where the known diagrams rank (out of n) and whether the audit suspects them."""
    rows = []
    for path in KNOWN_DIAGRAMS:
        found = audit.images[audit.images["path"] == path]
        if found.empty:
            rows.append({"image": path, "rank": "not in the pool (test split)", "suspected": "–", "in top 10": "–"})
            continue
        row = found.iloc[0]
        rows.append(
            {
                "image": path,
                "rank": f"{int(row['rank'])} of {len(audit.images)}",
                "label quality": f"{row['label_quality']:.3f}",
                "suggested": row["suggested"],
                "suspected": bool(row["is_issue"]),
                "in top 10": int(row["rank"]) <= 10,
            }
        )
    return pd.DataFrame(rows)


def planted_rows(audit: Audit, planted: list[str]) -> pd.DataFrame:
    """Precision/recall of the suspected issues against the planted flips among the audited images (all of them
    for a fine-tuned CV, whose fold models also predict the test split; the pool only for the probe)."""
    pool = set(audit.images["path"])
    in_pool = [p for p in planted if p in pool]
    flagged = audit.issues["path"].tolist()
    scores = detection_scores(flagged, in_pool, len(pool))
    top = audit.top(len(in_pool))["path"]
    top_hits = int(top.isin(in_pool).sum())
    return pd.DataFrame(
        [
            {
                "n (audited)": scores["n"],
                "planted (audited)": scores["planted"],
                "flagged": scores["flagged"],
                "hits": scores["hits"],
                "precision (95% CI)": fmt_ci(scores["precision"], scores["precision_ci95"]),
                "recall (95% CI)": fmt_ci(scores["recall"], scores["recall_ci95"]),
                "chance precision": f"{scores['chance_precision']:.3f}",
                f"hits in top {len(in_pool)}": top_hits,
            }
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the planted flips")
    parser.add_argument("--share", type=float, default=0.05, help="share of labels flipped")
    parser.add_argument(
        "--planted-model",
        choices=("finetune", "probe"),
        default="finetune",
        help="what predicts the noisy labels out of fold: the fine-tuned recipe, or the linear probe (fast)",
    )
    args = parser.parse_args(argv)
    folds_dir = OUT_DIR / "cv"
    lines = [f"# Label audit on the built-in data ({args.folds} folds x {args.epochs} epochs, efficientnet_lite0)"]
    started = time.perf_counter()
    clean = audit_cv(cross_validate(recipe(folds_dir, args.epochs), folds=args.folds, quiet=True).cv_dir)
    clean_s = time.perf_counter() - started
    lines += ["", "## Top 10 (original labels)", "", summary_line(clean), ""]
    lines += [markdown_table(issues_table(clean, 10).round(4)), "", "## The known diagrams", ""]
    lines += [markdown_table(known_rows(clean))]
    with tempfile.TemporaryDirectory(prefix="plantlib-audit-") as tmp:
        overrides, planted = plant_flips(recipe(folds_dir, args.epochs), args.share, args.seed, Path(tmp))
        started = time.perf_counter()
        noisy_config = recipe(folds_dir, args.epochs, label_overrides=str(overrides))
        noisy = audit_cv(noisy_cv(noisy_config, args.folds, args.planted_model), embeddings=False)
        noisy_s = time.perf_counter() - started
    lines += ["", f"## Planted noise: {len(planted)} labels flipped ({args.share:.0%}, seed {args.seed})", ""]
    lines += [f"Out-of-fold probabilities of the noisy labels from: {args.planted_model}", ""]
    lines += [summary_line(noisy), "", markdown_table(planted_rows(noisy, planted)), ""]
    lines += [f"Known diagrams suspected in the noisy run: {sorted(set(KNOWN_DIAGRAMS) & set(noisy.issues['path']))}"]
    lines += ["", f"Wall time (CV + audit, this machine under its load): clean {clean_s:.0f} s, noisy {noisy_s:.0f} s"]
    lines += [f"CV directories: {clean.cv_dir}, {noisy.cv_dir}"]
    text = "\n".join(lines) + "\n"
    write_text(BENCH_DIR / "audit.md", text)
    print(text)


if __name__ == "__main__":
    main()
