"""Predictions, metrics with confidence intervals, calibration, and report tables for a trained classifier.

Everything here works on plain arrays (labels as class indices, probabilities as an (N, C) array) so the
trainer, the CLI and the notebooks share one definition of every number they print. It owns the intervals:
`proportion_ci` for any proportion (accuracy), one seeded bootstrap (`bootstrap_resamples`) where no closed form
exists (macro F1, log loss, ECE), and `PROBABILITY_CLIP`, the one clip every log loss applies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from plantlib.io import atomic_path, atomic_write, write_json
from plantlib.runs import evaluation_names
from plantlib.runtime import maybe_autocast

# Rows must sum to one within this before metrics trust them; anything further off is probably logits.
_PROBABILITY_TOLERANCE = 1e-3
# Resamples drawn at once in the bootstrap, scaled by n, so memory stays small for large test sets.
_BOOTSTRAP_CELLS_PER_CHUNK = 4_000_000
# Every log loss reads probabilities clipped to [PROBABILITY_CLIP, 1 - PROBABILITY_CLIP] (rows renormalised), so
# one image given 0 for its true class costs -log(1e-15) = 34.5 instead of infinity, and a point estimate and its
# bootstrap interval clip alike. sklearn's log_loss (>= 1.5) takes no eps: it clips at float64's epsilon, 2.2e-16.
PROBABILITY_CLIP = 1e-15
# How each interval in `compute_metrics(...)["ci95"]` is made; recorded with the metrics so a report can say.
CI95_METHODS = {
    "accuracy": "exact (Clopper-Pearson)",
    "f1_macro": "percentile bootstrap",
    "log_loss": "percentile bootstrap",
    "ece": "percentile bootstrap",
}


def predict_logits(
    model: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    max_batches: int | None = None,
) -> torch.Tensor:
    """Float32 logits (N, C) on the CPU, in loader order; an empty loader gives (0, 0).

    The loader yields `(images, targets)` batches (or bare image tensors). `autocast_dtype` runs the
    forward pass under autocast (bfloat16 on CPU, float16 on CUDA). The model's train/eval mode is restored
    afterwards so a trainer can call this mid-fit.
    """
    device = torch.device(device)
    was_training = getattr(model, "training", False)  # a compiled network (plantlib.inference.engine) has no modes
    if was_training:
        model.eval()
    chunks: list[torch.Tensor] = []
    try:
        with torch.inference_mode():
            for index, batch in enumerate(loader):
                if max_batches is not None and index >= max_batches:
                    break
                images = batch[0] if isinstance(batch, (list, tuple)) else batch
                images = images.to(device, non_blocking=True)
                if images.dim() == 4 and isinstance(model, torch.nn.Module):  # a compiled network takes NCHW
                    images = images.contiguous(memory_format=torch.channels_last)
                with maybe_autocast(device, autocast_dtype):
                    logits = model(images)
                chunks.append(logits.float().cpu())
    finally:
        if was_training:
            model.train()
    return torch.cat(chunks) if chunks else torch.zeros(0, 0)


def softmax_probabilities(logits: torch.Tensor) -> np.ndarray:
    """Float64 probabilities whose rows sum to 1 to machine precision (sklearn warns otherwise)."""
    probs = torch.softmax(logits.float(), dim=1).double()
    return (probs / probs.sum(dim=1, keepdim=True)).numpy()


def predict_probabilities(
    model: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Softmax probabilities (N, C) as float64, in loader order (see `predict_logits`)."""
    logits = predict_logits(model, loader, device, autocast_dtype)
    if logits.numel() == 0:
        raise ValueError("the loader yielded no batches; check that the split it reads is not empty")
    return softmax_probabilities(logits)


def _check_inputs(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and values once, so every metric below can assume clean inputs."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty (N, C) array; got shape {probs.shape}")
    if probs.shape[1] != len(class_names):
        raise ValueError(
            f"probs has {probs.shape[1]} columns but {len(class_names)} class names were given "
            f"({class_names}); pass one name per model output"
        )
    if probs.shape[1] < 2:
        raise ValueError(f"need at least two classes; got {class_names}")
    if y_true.shape != (probs.shape[0],):
        raise ValueError(f"y_true must have shape ({probs.shape[0]},) to match probs; got {y_true.shape}")
    if not np.issubdtype(y_true.dtype, np.integer):
        if not np.all(np.mod(y_true, 1) == 0):
            raise ValueError("y_true must hold class indices (integers), not names or scores")
        y_true = y_true.astype(np.int64)
    if y_true.min() < 0 or y_true.max() >= len(class_names):
        raise ValueError(f"y_true holds class indices outside 0..{len(class_names) - 1}: {np.unique(y_true)}")
    sums = probs.sum(axis=1)
    if probs.min() < 0 or probs.max() > 1 or np.abs(sums - 1).max() > _PROBABILITY_TOLERANCE:
        raise ValueError(
            "probs rows must be probabilities in [0, 1] summing to 1 "
            f"(row sums range {sums.min():.4g}..{sums.max():.4g}); apply softmax to logits first"
        )
    return y_true, probs / sums[:, None]


def proportion_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a proportion, e.g. accuracy as `successes` right out of `n` images.

    It covers the true proportion at least `confidence` of the time at every n and p, the edges included: 10 right
    out of 10 gives 0.692-1, where a bootstrap of the same images collapses to 1-1. The price is some extra width:
    it is conservative, covering 95-99% of the time (`benchmarks/coverage.py` measures it).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1 (0.95 for a 95% interval); got {confidence}")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive whole number of trials; got {n}")
    if int(successes) != successes or not 0 <= successes <= n:
        raise ValueError(f"successes must be a whole number between 0 and n={n}; got {successes}")
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def clip_probabilities(probs: np.ndarray) -> np.ndarray:
    """`probs` clipped to [PROBABILITY_CLIP, 1 - PROBABILITY_CLIP] with rows renormalised: what every log loss reads."""
    clipped = np.clip(np.asarray(probs, dtype=np.float64), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    return clipped / clipped.sum(axis=1, keepdims=True)


def expected_calibration_error(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10
) -> tuple[float, dict[str, list]]:
    """ECE over top-1 confidence with equal-width bins, plus the per-bin table a reliability diagram draws.

    Bins are (lower, upper], the first one closed at 0. Empty bins report None for confidence and accuracy.
    ECE is the count-weighted mean gap |accuracy - confidence|: 0 when the model is as sure as it is right. On a
    finite test set it is biased upward (each bin's sampling noise adds to |gap|), so a well calibrated model
    still scores above 0, and more so the fewer images per bin.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1; got {n_bins}")
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges[1:-1], confidence, side="left"), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    correct_sum = np.bincount(which, weights=correct, minlength=n_bins)
    filled = counts > 0
    mean_conf = np.divide(conf_sum, counts, out=np.zeros(n_bins), where=filled)
    mean_acc = np.divide(correct_sum, counts, out=np.zeros(n_bins), where=filled)
    ece = float(np.sum(counts * np.abs(mean_acc - mean_conf)) / max(len(confidence), 1))
    reliability = {
        "bin_lower": [float(x) for x in edges[:-1]],
        "bin_upper": [float(x) for x in edges[1:]],
        "confidence": [float(c) if f else None for c, f in zip(mean_conf, filled, strict=True)],
        "accuracy": [float(a) if f else None for a, f in zip(mean_acc, filled, strict=True)],
        "count": [int(c) for c in counts],
    }
    return ece, reliability


def _roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Binary: AUC of class 1. Multiclass: macro one-vs-rest over classes present in y_true.

    sklearn's own multiclass OvR fails when a class is absent from y_true, so classes without both
    positives and negatives are left out of the average rather than crashing the evaluation.
    """
    if np.unique(y_true).size < 2:
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(y_true, probs[:, 1]))
    scores = [
        roc_auc_score(y_true == k, probs[:, k]) for k in range(probs.shape[1]) if 0 < np.sum(y_true == k) < len(y_true)
    ]
    return float(np.mean(scores))


def bootstrap_resamples(n: int, n_bootstrap: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap every interval here uses: `n_bootstrap` seeded resamples of n images drawn with replacement,
    as (resamples, n) index arrays in chunks small enough to keep memory low for large test sets."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS_PER_CHUNK // n)
    for start in range(0, n_bootstrap, chunk):
        yield rng.integers(0, n, size=(min(chunk, n_bootstrap - start), n))


def _percentile_interval(values: list[np.ndarray]) -> list[float]:
    """The 95% percentile interval of a bootstrap's statistics."""
    return [float(x) for x in np.percentile(np.concatenate(values), [2.5, 97.5])]


def _bootstrap_f1_ci(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, n_bootstrap: int, seed: int
) -> dict[str, list[float] | None]:
    """95% percentile interval for macro F1 by resampling test images with replacement (it has no closed form).

    Each resample is reduced to a confusion matrix with one vectorised bincount, so 1000 resamples of a
    few thousand images take milliseconds. Macro F1 averages the classes present in each resample (in
    its labels or predictions), as `compute_metrics` does for the point estimate. Like any percentile bootstrap it
    under-covers on small test sets and collapses at the edge: perfect predictions give 1-1.
    """
    if n_bootstrap < 1:
        return {"f1_macro": None}
    cells = n_classes * n_classes
    code = y_true * n_classes + y_pred
    f1_macro = []
    for picks in bootstrap_resamples(len(y_true), n_bootstrap, seed):
        size = len(picks)
        flat = (code[picks] + (np.arange(size) * cells)[:, None]).ravel()
        matrices = np.bincount(flat, minlength=size * cells).reshape(size, n_classes, n_classes)
        tp = np.diagonal(matrices, axis1=1, axis2=2).astype(np.float64)
        denominator = matrices.sum(axis=1) + matrices.sum(axis=2)  # predicted + true = 2tp + fp + fn
        seen = denominator > 0
        f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=seen)
        f1_macro.append(f1.sum(axis=1) / seen.sum(axis=1))
    return {"f1_macro": _percentile_interval(f1_macro)}


def _bootstrap_probability_ci(
    y_true: np.ndarray, probs: np.ndarray, n_bootstrap: int, seed: int, n_bins: int = 10
) -> dict[str, list[float] | None]:
    """95% percentile intervals for log loss and ECE over the same kind of image resamples as macro F1's.

    Per image: its log loss term (probabilities clipped as for the point estimate), its confidence bin and its
    (correct - confidence); a resample's ECE is then one weighted bincount, as in `expected_calibration_error`.
    Where they under-cover: ECE is biased upward, so near 0 the interval sits above the truth and can exclude
    a perfectly calibrated model's 0 altogether. Log loss is a mean of heavy-tailed terms: a few confidently
    wrong images dominate it, and resamples that miss them make the interval too short; with probabilities
    at the clip (`PROBABILITY_CLIP`) it describes the clipped loss, not the (infinite) unclipped one.
    """
    if n_bootstrap < 1:
        return {"log_loss": None, "ece": None}
    n = len(y_true)
    losses = -np.log(clip_probabilities(probs)[np.arange(n), y_true])
    confidence = probs.max(axis=1)
    gap = (probs.argmax(axis=1) == y_true).astype(np.float64) - confidence
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges[1:-1], confidence, side="left"), 0, n_bins - 1)
    log_losses, eces = [], []
    for picks in bootstrap_resamples(n, n_bootstrap, seed + 1):
        size = len(picks)
        log_losses.append(losses[picks].mean(axis=1))
        flat = (which[picks] + (np.arange(size) * n_bins)[:, None]).ravel()
        sums = np.bincount(flat, weights=gap[picks].ravel(), minlength=size * n_bins).reshape(size, n_bins)
        eces.append(np.abs(sums).sum(axis=1) / n)
    return {"log_loss": _percentile_interval(log_losses), "ece": _percentile_interval(eces)}


def probability_intervals(
    y_true: np.ndarray, probs: np.ndarray, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, list[float] | None]:
    """95% bootstrap intervals of log loss and ECE, exactly as `compute_metrics` makes them (same resamples)."""
    return _bootstrap_probability_ci(
        np.asarray(y_true, dtype=np.int64), np.asarray(probs, dtype=np.float64), n_bootstrap, seed
    )


def per_image_log_loss(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Each image's log loss, −log p(true class), with the one clip every log loss here applies."""
    y_true = np.asarray(y_true, dtype=np.int64)
    return -np.log(clip_probabilities(probs)[np.arange(len(y_true)), y_true])


def compute_metrics(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every number a report needs, as a JSON-serialisable dict.

    Predictions are the argmax of `probs`. `per_class` and the confusion matrices cover every class (zeros
    for one that never occurs); precision, recall and F1 are macro averages over the classes that occur in
    y_true or the predictions. `ci95` holds 95% intervals as [low, high]: exact (Clopper-Pearson) for accuracy,
    whatever `n_bootstrap`; a seeded percentile bootstrap of `n_bootstrap` resamples for macro F1, log loss and ECE
    (None when it is 0), so reruns print identical intervals; `ci95_method` says which is which. `roc_auc` is None
    when y_true has a single class. `absent_classes` names the classes with no image here: the averages say
    nothing about them.
    """
    y_true, probs = _check_inputs(y_true, probs, class_names)
    labels = list(range(len(class_names)))
    y_pred = probs.argmax(axis=1)
    ece, reliability = expected_calibration_error(y_true, probs)
    return {
        "n": len(y_true),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        **_class_scores(y_true, y_pred, class_names),
        "roc_auc": _roc_auc(y_true, probs),
        **_confusion_matrices(y_true, y_pred, labels),
        "classification_report": classification_report(
            y_true, y_pred, labels=labels, target_names=list(class_names), digits=3, zero_division=0
        ),
        "ci95": _intervals(y_true, y_pred, probs, n_bootstrap, seed),
        "ci95_method": dict(CI95_METHODS),
        "bootstrap": {"resamples": int(n_bootstrap), "seed": int(seed)},
        "ece": ece,
        "reliability": reliability,
        "log_loss": float(log_loss(y_true, clip_probabilities(probs), labels=labels)),
        "class_names": list(class_names),
        "absent_classes": [name for k, name in enumerate(class_names) if not np.any(y_true == k)],
    }


def _class_scores(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Macro precision, recall and F1, and each class's own with its support."""
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    # Macro averages cover the classes seen in y_true or the predictions (sklearn's default label set):
    # a class that never occurs says nothing about the model and would otherwise count as an F1 of 0.
    seen = np.isin(labels, np.union1d(y_true, y_pred))
    per_class = {
        name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k])}
        | {"support": int(support[k])}
        for k, name in enumerate(class_names)
    }
    return {
        "precision": float(np.mean(precision[seen])),
        "recall": float(np.mean(recall[seen])),
        "f1": float(np.mean(f1[seen])),
        "per_class": per_class,
    }


def _confusion_matrices(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int]) -> dict[str, list]:
    """The confusion matrix (rows: true class) and its row-normalised form (zeros for a class with no image)."""
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    row_totals = matrix.sum(axis=1, keepdims=True)
    normalized = np.divide(matrix, row_totals, out=np.zeros(matrix.shape), where=row_totals > 0)
    return {"confusion_matrix": matrix.astype(int).tolist(), "confusion_matrix_normalized": normalized.tolist()}


def _intervals(
    y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, n_bootstrap: int, seed: int
) -> dict[str, list[float] | None]:
    """`ci95`: the exact interval of accuracy, the bootstrap ones of macro F1, log loss and ECE."""
    correct = int(np.sum(y_pred == y_true))
    return (
        {"accuracy": list(proportion_ci(correct, len(y_true)))}
        | _bootstrap_f1_ci(y_true, y_pred, probs.shape[1], n_bootstrap, seed)
        | _bootstrap_probability_ci(y_true, probs, n_bootstrap, seed)
    )


def predictions_frame(
    paths: list[str], y_true: np.ndarray | None, probs: np.ndarray, class_names: list[str]
) -> pd.DataFrame:
    """One row per image: path, true and predicted class names, confidence, correct, and `p_<class>` columns.

    Without labels (plain prediction on new images) the `true` and `correct` columns are left out.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise ValueError(f"probs must have shape (N, {len(class_names)}) for classes {class_names}; got {probs.shape}")
    if len(paths) != len(probs):
        raise ValueError(f"got {len(paths)} paths for {len(probs)} rows of probabilities; pass one path per image")
    names = np.asarray(class_names, dtype=object)
    predicted = probs.argmax(axis=1)
    columns: dict[str, Any] = {"path": [str(p) for p in paths]}  # one DataFrame at the end: inserting is slow
    if y_true is not None:
        y_true = np.asarray(y_true, dtype=np.int64)
        if y_true.shape != (len(probs),):
            raise ValueError(f"y_true must have shape ({len(probs)},); got {y_true.shape}")
        columns["true"] = names[y_true]
    columns["predicted"] = names[predicted]
    columns["confidence"] = probs.max(axis=1)
    if y_true is not None:
        columns["correct"] = predicted == y_true
    for k, name in enumerate(class_names):
        columns[f"p_{name}"] = probs[:, k]
    return pd.DataFrame(columns)


def class_columns(frame: pd.DataFrame) -> list[str]:
    """Class names in model order, read from the `p_<class>` columns."""
    return [column[2:] for column in frame.columns if column.startswith("p_")]


def check_predictions_frame(frame: pd.DataFrame) -> None:
    """Fail with the missing columns when `frame` is not a `predictions_frame` (galleries and browsers need one)."""
    missing = [c for c in ("path", "predicted", "confidence") if c not in frame.columns]
    missing += [] if class_columns(frame) else ["p_<class>"]
    if missing:
        raise ValueError(
            f"predictions frame lacks columns {missing} (it has {list(frame.columns)}); "
            "build it with plantlib.evaluation.metrics.predictions_frame"
        )


def misclassified(frame: pd.DataFrame) -> pd.DataFrame:
    """Wrong predictions, most confidently wrong first: the images worth looking at (label noise, hard cases)."""
    if "correct" not in frame.columns:
        raise ValueError("the predictions frame has no 'correct' column; build it with true labels (y_true)")
    wrong = frame[~frame["correct"].astype(bool)]
    return wrong.sort_values("confidence", ascending=False, kind="stable")


def save_evaluation(out_dir: Path, metrics: dict, frame: pd.DataFrame, prefix: str = "") -> dict[str, Path]:
    """Write `[<prefix>_]metrics.json` and `[<prefix>_]predictions.csv` together; return their paths.

    Metrics go to a temporary file that is moved into place only after the predictions were written: a failed
    write (a file name that cannot be encoded, a full disk) leaves no metrics without their predictions.
    A run's test split uses no prefix (`metrics.json`); other splits are named, e.g. `val_metrics.json`.
    """
    metrics_name, predictions_name = evaluation_names(prefix)
    paths = {"metrics": Path(out_dir) / metrics_name, "predictions": Path(out_dir) / predictions_name}
    with atomic_path(paths["metrics"]) as metrics_tmp:
        write_json(metrics_tmp, metrics)
        atomic_write(paths["predictions"], lambda handle: frame.to_csv(handle, index=False))
    return paths


def interval(metrics: dict, key: str) -> list[float] | None:
    """The 95% CI of `key` recorded in `metrics` ("accuracy", "f1_macro", "log_loss", "ece"), or None."""
    ci = (metrics.get("ci95") or {}).get(key)
    return list(ci) if ci is not None else None


def with_ci(value: float, ci: list[float] | None) -> str:
    """ "0.933 (95% CI 0.867–0.983)", or the value alone without an interval."""
    return f"{value:.3f}" if ci is None else f"{value:.3f} (95% CI {ci[0]:.3f}–{ci[1]:.3f})"


def format_metrics(metrics: dict) -> str:
    """A headline line plus sklearn's classification report, for printing in a terminal or log."""
    parts = [
        f"accuracy {with_ci(metrics['accuracy'], interval(metrics, 'accuracy'))}",
        f"F1 {with_ci(metrics['f1'], interval(metrics, 'f1_macro'))}",
    ]
    if metrics.get("roc_auc") is not None:
        parts.append(f"ROC AUC {metrics['roc_auc']:.3f}")
    if metrics.get("ece") is not None:
        parts.append(f"ECE {with_ci(metrics['ece'], interval(metrics, 'ece'))}")
    if metrics.get("log_loss") is not None:
        parts.append(f"log loss {with_ci(metrics['log_loss'], interval(metrics, 'log_loss'))}")
    parts.append(f"n={metrics['n']}")
    lines = [" · ".join(parts)]
    if metrics.get("absent_classes"):
        lines.append(
            f"warning: no image of class(es) {', '.join(metrics['absent_classes'])} in this set; "
            "these metrics do not measure them"
        )
    if metrics.get("classification_report"):
        lines += ["", metrics["classification_report"].rstrip()]
    return "\n".join(lines)


# What a report says under `metrics_table` for the rows without an interval (their ci_low and ci_high are NaN).
NO_INTERVAL_NOTE = (
    "no 95% interval is computed for macro precision, macro recall or ROC AUC: read them as point estimates on "
    "these images (ROC AUC has no value when the images hold a single class)"
)


def metrics_table(metrics: dict) -> pd.DataFrame:
    """Headline metrics as tidy rows (metric, value, ci_low, ci_high, interval) for notebooks and comparisons.

    `interval` names how the 95% CI was made (`CI95_METHODS`), or says that none is computed: macro precision,
    macro recall and ROC AUC have none, so their bounds are NaN rather than an interval nobody computed (a report
    shows them as a dash with `NO_INTERVAL_NOTE`). ROC AUC's value is NaN when the images hold a single class.
    """
    methods = metrics.get("ci95_method") or CI95_METHODS
    rows = []
    for metric, key, ci_key in (
        ("accuracy", "accuracy", "accuracy"),
        ("precision_macro", "precision", None),
        ("recall_macro", "recall", None),
        ("f1_macro", "f1", "f1_macro"),
        ("roc_auc", "roc_auc", None),
        ("ece", "ece", "ece"),
        ("log_loss", "log_loss", "log_loss"),
    ):
        value = metrics.get(key)
        ci = interval(metrics, ci_key) if ci_key else None
        rows.append(
            {
                "metric": metric,
                "value": np.nan if value is None else float(value),
                "ci_low": np.nan if ci is None else ci[0],
                "ci_high": np.nan if ci is None else ci[1],
                "interval": "none computed" if ci is None else methods.get(ci_key, "95% CI"),
            }
        )
    return pd.DataFrame(rows, columns=["metric", "value", "ci_low", "ci_high", "interval"])


def metrics_side_by_side(named: dict[str, dict]) -> pd.DataFrame:
    """One row per evaluation (e.g. plain vs test-time augmentation): n, accuracy, log loss, ECE with 95% CIs."""
    rows = []
    for name, metrics in named.items():
        rows.append(
            {
                "evaluation": name,
                "n": metrics["n"],
                **{
                    label: with_ci(metrics[key], interval(metrics, ci_key))
                    for label, key, ci_key in (
                        ("accuracy", "accuracy", "accuracy"),
                        ("log loss", "log_loss", "log_loss"),
                        ("ECE", "ece", "ece"),
                    )
                },
            }
        )
    return pd.DataFrame(rows)


def arrays_from_predictions(frame: pd.DataFrame, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(y_true as class indices, probabilities (N, C)) back from a predictions frame, e.g. for ROC plots."""
    y_true = frame["true"].map({c: i for i, c in enumerate(class_names)}).to_numpy()
    probs = frame[[f"p_{c}" for c in class_names]].to_numpy()
    return y_true, probs
