"""How often the 95% intervals of `metrics.compute_metrics` (plantlib.evaluation) cover the truth, by seeded simulation.

Accuracy: the exact (Clopper-Pearson) interval against the percentile bootstrap it replaced (reimplemented here),
at test-set sizes n = 10, 60, 340 and true accuracies 0.8 to 1. Log loss and ECE: the bootstrap intervals of a
perfectly calibrated synthetic model (labels drawn from its own probabilities, so its true ECE is 0), and, for
contrast, of an overconfident one. Prints markdown tables; takes well under a minute on two CPU cores.

    python -m benchmarks.coverage [--seed 0] [--draws 20000] [--datasets 300]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from plantlib.evaluation.metrics import PROBABILITY_CLIP, compute_metrics, proportion_ci

SIZES = (10, 60, 340)
ACCURACIES = (0.8, 0.95, 0.98, 1.0)
CLASSES = [f"class_{k}" for k in range(5)]
LOGIT_SCALE = 6.0  # spread of the synthetic model's logits: about 87% accuracy with five classes
SHARPEN = 4.0  # the overconfident model reports softmax(SHARPEN * logits) while labels follow softmax(logits)


def old_percentile_bootstrap(correct: int, n: int, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The accuracy interval `compute_metrics` used to report: percentiles 2.5 and 97.5 of resampled accuracies."""
    hits = np.arange(n) < correct
    picks = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    low, high = np.percentile(hits[picks].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def accuracy_rows(draws: int, seed: int) -> list[str]:
    """Both intervals depend on the data only through the number right, so each is computed once per count."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in SIZES:
        exact = np.array([proportion_ci(k, n) for k in range(n + 1)])
        old = np.array([old_percentile_bootstrap(k, n) for k in range(n + 1)])
        for p in ACCURACIES:
            counts = rng.binomial(n, p, size=draws)
            cells = []
            for table in (exact, old):
                low, high = table[counts, 0], table[counts, 1]
                cells += [f"{np.mean((low <= p) & (p <= high)):.3f}", f"{np.mean(high - low):.3f}"]
            rows.append(f"| {n} | {p:.2f} | " + " | ".join(cells) + " |")
    return rows


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def synthetic(n: int, rng: np.random.Generator, sharpen: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits); the model reports softmax(sharpen * logits) (calibrated when 1)."""
    logits = rng.normal(scale=LOGIT_SCALE, size=(n, len(CLASSES)))
    cumulative = softmax(logits).cumsum(axis=1)
    labels = np.minimum((rng.random(n)[:, None] > cumulative).sum(axis=1), len(CLASSES) - 1)
    return labels, softmax(sharpen * logits)


def true_log_loss(sharpen: float, rng: np.random.Generator, samples: int = 1_000_000) -> float:
    """Expected per-image log loss (clipped as plantlib clips) over the synthetic population, by a large sample."""
    logits = rng.normal(scale=LOGIT_SCALE, size=(samples, len(CLASSES)))
    reported = np.clip(softmax(sharpen * logits), PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    reported /= reported.sum(axis=1, keepdims=True)
    return float(np.mean(np.sum(softmax(logits) * -np.log(reported), axis=1)))


def bootstrap_rows(datasets: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    rows = []
    for model, sharpen in (("calibrated", 1.0), ("overconfident", SHARPEN)):
        truth = {"log_loss": true_log_loss(sharpen, rng), "ece": 0.0 if sharpen == 1.0 else None}
        for n in SIZES[1:]:
            found: dict[str, list[tuple[float, float, float]]] = {"log_loss": [], "ece": []}
            for _ in range(datasets):
                labels, probs = synthetic(n, rng, sharpen)
                metrics = compute_metrics(labels, probs, CLASSES, seed=int(rng.integers(2**31)))
                for name in found:
                    found[name].append((metrics[name], *metrics["ci95"][name]))
            for name, values in found.items():
                if truth[name] is None:  # the overconfident model's binned ECE has no simple closed form
                    continue
                point, low, high = np.array(values).T
                covered = np.mean((low <= truth[name]) & (truth[name] <= high))
                rows.append(
                    f"| {name} | {model} | {n} | {truth[name]:.3f} | {point.mean():.3f} | {covered:.3f} | "
                    f"{np.mean(high - low):.3f} |"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of every simulation (default: 0)")
    parser.add_argument("--draws", type=int, default=20_000, help="simulated test sets per accuracy cell")
    parser.add_argument("--datasets", type=int, default=300, help="simulated test sets per log loss / ECE cell")
    args = parser.parse_args()
    start = time.perf_counter()
    print(f"Accuracy: coverage of the 95% interval ({args.draws} simulated test sets per row)\n")
    print(
        "| n | true accuracy | exact (Clopper-Pearson) coverage | mean width | old percentile bootstrap coverage "
        "| mean width |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(accuracy_rows(args.draws, args.seed)))
    print(
        "\nAt true accuracy 1 the old interval is the single point 1-1: it covers only because the truth is exactly 1."
    )
    print(
        f"\nLog loss and ECE: coverage of the 95% percentile bootstrap ({args.datasets} simulated test sets "
        f"per row, {len(CLASSES)} classes, 1000 resamples each)\n"
    )
    print("| metric | model | n | true value | mean estimate | coverage | mean width |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(bootstrap_rows(args.datasets, args.seed + 1)))
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
