"""How often does the verdict rule claim a difference that is not there (A/A), and does it find one that is (A/B)?

Simulated part (seconds): many synthetic recipe pairs through the real comparison code (`compare.pairwise_table`).
Each simulation draws a fresh pool of 340 images' features from one population, folds it with one fold seed, and
cross-validates a stochastic learner (scikit-learn's SGD logistic regression: its seed sets initial order and
shuffling, as a network's seed does) under two configurations:
- A/A: the same recipe with other training seeds: any claimed difference is a false one;
- four equal configurations compared pairwise: the family-wise false-difference rate under Holm's correction;
- A/B: 5 passes over the data vs 1 (a small real difference, ~2.5 points), and the full recipe vs one that sees 8
  of the 12 features (a large one, ~9 points, about the size of 6 epochs vs 1 on the built-in data).
Beside the rule's rate, the previous rule's (a paired bootstrap over pooled images, no correction) on the same
simulations.

Real part: A/A pairs and an A/B pair of cross-validations on the built-in data, given as CV directories
(`--aa A B` repeated, `--ab A B`) or trained here (`--train`: default recipe, lite0, 5 folds, training seeds 1–6
on fold seed 42, and one 1-epoch CV; about 35 minutes on 2 cores).

    python -m benchmarks.verdicts [--simulations 1000] [--aa CV CV]... [--ab CV CV] [--same-recipe CV...] [--train]

Writes artifacts/bench/verdicts.md (verdicts-real.md with --skip-simulation): the tables the README quotes.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import SGDClassifier
from sklearn.model_selection import StratifiedKFold

from benchmarks.measure import BENCH_DIR
from plantlib.evaluation.metrics import proportion_ci
from plantlib.experiments.compare import Evaluated, compare_paths, pairwise_table
from plantlib.experiments.stats import NOT_DISTINGUISHABLE
from plantlib.io import write_text

POOL = 340
FOLDS = 5


def population(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A large two-class population the full recipe gets about 95% right, as the built-in data (1% label noise)."""
    return make_classification(
        n_samples=50_000, n_features=12, n_informative=6, flip_y=0.01, class_sep=2.5, random_state=seed
    )


def cross_validated(
    x: np.ndarray, y: np.ndarray, recipe: tuple[int, int], seeds: Sequence[int], fold_seed: int, name: str
) -> Evaluated:
    """Out-of-fold predictions of SGD logistic regression in the layout `plantlib cv` writes (repeat, fold).

    `recipe` is (passes over the data, features used): (5, 12) is the full recipe.
    """
    passes, features = recipe
    x = x[:, :features]
    rows = []
    for repeat, seed in enumerate(seeds):
        splitter = StratifiedKFold(FOLDS, shuffle=True, random_state=fold_seed + repeat)
        for fold, (train, test) in enumerate(splitter.split(x, y)):
            model = SGDClassifier(
                loss="log_loss", alpha=0.03, max_iter=passes, tol=None, random_state=seed * 1000 + fold
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(x[train], y[train])
            probs = model.predict_proba(x[test])
            frame = pd.DataFrame({"path": [f"i{i}" for i in test], "true": y[test].astype(str)})
            frame["predicted"] = probs.argmax(axis=1).astype(str)
            frame["p_0"], frame["p_1"] = probs[:, 0], probs[:, 1]
            rows.append(frame.assign(repeat=repeat, fold=fold))
    settings = {"status": "finished", "folds": FOLDS, "repeats": len(seeds), "fold_seed": fold_seed}
    return Evaluated(name, pd.concat(rows, ignore_index=True), Path(name), settings)


def previous_rule_differs(a: Evaluated, b: Evaluated, resamples: int = 2000, seed: int = 0) -> bool:
    """The rule before this one: a paired bootstrap interval over pooled images excludes 0 (no correction)."""
    correct_a = (a.predictions.sort_values(["repeat", "path"])).eval("true == predicted").to_numpy(float)
    correct_b = (b.predictions.sort_values(["repeat", "path"])).eval("true == predicted").to_numpy(float)
    difference = correct_a - correct_b
    picks = np.random.default_rng(seed).integers(0, len(difference), size=(resamples, len(difference)))
    low, high = np.percentile(difference[picks].mean(axis=1), [2.5, 97.5])
    return bool(low > 0 or high < 0)


def simulate(simulations: int, seed: int = 7) -> list[dict]:
    x_all, y_all = population()
    rng = np.random.default_rng(seed)
    rows = []
    full, one_pass, fewer_features = (5, 12), (1, 12), (5, 8)
    scenarios = (
        ("A/A, 1 repeat", [full, full], 1),
        ("A/A, 3 repeats (seeds)", [full, full], 3),
        ("4 equal configurations, 6 pairs", [full] * 4, 1),
        ("A/B small: 5 passes vs 1, 1 repeat", [full, one_pass], 1),
        ("A/B small: 5 passes vs 1, 3 repeats", [full, one_pass], 3),
        ("A/B large: 12 features vs 8, 1 repeat", [full, fewer_features], 1),
        ("A/B large: 12 features vs 8, 3 repeats", [full, fewer_features], 3),
    )
    for label, recipes, repeats in scenarios:
        count = len(recipes)
        runs = simulations if repeats == 1 and count == 2 else max(simulations // 3, 1)
        claimed, claimed_before, accuracy_gap = 0, 0, []
        started = time.perf_counter()
        for _ in range(runs):
            pick = rng.choice(len(y_all), POOL, replace=False)
            x, y = x_all[pick], y_all[pick]
            fold_seed = int(rng.integers(1 << 30))
            seeds = rng.choice(1 << 20, size=(count, repeats), replace=False)
            items = [cross_validated(x, y, recipes[i], seeds[i].tolist(), fold_seed, f"c{i}") for i in range(count)]
            pairs = pairwise_table(items)
            claimed += int((pairs["verdict"] != NOT_DISTINGUISHABLE).any())
            claimed_before += int(any(previous_rule_differs(a, b) for a, b in itertools.combinations(items, 2)))
            accuracy_gap.append(float(pairs["difference"].iloc[0]))
        low, high = proportion_ci(claimed, runs)
        before_low, before_high = proportion_ci(claimed_before, runs)
        rows.append(
            {
                "scenario": label,
                "simulations": runs,
                "difference claimed (rule)": f"{claimed / runs:.3f} ({low:.3f}–{high:.3f})",
                "previous rule": f"{claimed_before / runs:.3f} ({before_low:.3f}–{before_high:.3f})",
                "mean accuracy A − B": f"{np.mean(accuracy_gap):+.3f}",
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


def train_real(out: Path) -> tuple[list[tuple[Path, Path]], tuple[Path, Path]]:
    """The real pairs: lite0 default recipe, fold seed 42, training seeds 1–6 (A/A) and a 1-epoch CV (A/B)."""
    from plantlib.config import RunConfig
    from plantlib.experiments.cv import cross_validate

    base = RunConfig(split_seed=42, tracking="off", output_dir=str(out))
    by_seed = {seed: cross_validate(base.replace(seed=seed), folds=FOLDS).cv_dir for seed in range(1, 7)}
    short = cross_validate(base.replace(seed=1, epochs=1), folds=FOLDS).cv_dir
    return [(by_seed[1], by_seed[2]), (by_seed[3], by_seed[4]), (by_seed[5], by_seed[6])], (by_seed[1], short)


def real_rows(pairs: Sequence[tuple[Path, Path]], kind: str) -> list[dict]:
    rows = []
    for a, b in pairs:
        comparison = compare_paths([a, b])
        row = comparison.pairs.iloc[0]
        summary = comparison.summary
        rows.append(
            {
                "pair": f"{kind}: {Path(a).name} vs {Path(b).name}",
                "accuracy A (95% CI), n": _with_ci(summary.iloc[0]),
                "accuracy B (95% CI), n": _with_ci(summary.iloc[1]),
                "difference (95% CI)": f"{row['difference']:+.3f} ({row['ci_low']:+.3f} to {row['ci_high']:+.3f})",
                "p": f"{row['p_value']:.3f}",
                "verdict": "difference" if row["verdict"] != NOT_DISTINGUISHABLE else NOT_DISTINGUISHABLE,
            }
        )
    return rows


def markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def same_recipe_rows(cv_dirs: Sequence[Path]) -> list[dict]:
    """Every pair of cross-validations of one recipe (other training seeds, same folds): how many pairs the rule
    calls different when each pair is compared alone, and when all are compared together (Holm over all pairs)."""
    pairs = list(itertools.combinations(cv_dirs, 2))
    alone = sum(compare_paths([a, b]).pairs.iloc[0]["verdict"] != NOT_DISTINGUISHABLE for a, b in pairs)
    together = compare_paths(list(cv_dirs)).pairs
    low, high = proportion_ci(int(alone), len(pairs))
    claimed = int((together["verdict"] != NOT_DISTINGUISHABLE).sum())
    return [
        {
            "same recipe, CVs": len(cv_dirs),
            "pairs": len(pairs),
            "called different, each pair alone": f"{alone} ({alone / len(pairs):.3f}, {low:.3f}–{high:.3f})",
            "called different, all compared together (Holm)": claimed,
            "smallest p": f"{together['p_value'].min():.3f}",
        }
    ]


def _with_ci(score: pd.Series) -> str:
    return f"{score['accuracy']:.3f} ({score['accuracy_ci_low']:.3f}–{score['accuracy_ci_high']:.3f}), {score['n']}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulations", type=int, default=1000, help="A/A pairs simulated (default: 1000)")
    parser.add_argument("--aa", nargs=2, action="append", type=Path, metavar="CV_DIR", default=[])
    parser.add_argument("--ab", nargs=2, type=Path, metavar="CV_DIR")
    parser.add_argument(
        "--same-recipe", nargs="+", type=Path, metavar="CV_DIR", default=[], help="CVs of one recipe: every pair"
    )
    parser.add_argument("--train", action="store_true", help="train the real A/A and A/B cross-validations here")
    parser.add_argument("--skip-simulation", action="store_true")
    args = parser.parse_args(argv)
    lines = [f"# Verdict calibration ({platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')})", ""]
    if not args.skip_simulation:
        table = pd.DataFrame(simulate(args.simulations))
        lines += ["## Simulated (synthetic pools of 340, 5 folds)", "", markdown_table(table), ""]
    aa, ab = [tuple(pair) for pair in args.aa], tuple(args.ab) if args.ab else None
    if args.train:
        aa, ab = train_real(BENCH_DIR / "verdicts")
        args.same_recipe = sorted({path for pair in aa for path in pair})
    if aa or ab:
        real = pd.DataFrame(real_rows(aa, "A/A") + (real_rows([ab], "A/B") if ab else []))
        lines += ["## Real cross-validations (built-in data, 5 folds)", "", markdown_table(real), ""]
    if args.same_recipe:
        table = pd.DataFrame(same_recipe_rows(args.same_recipe))
        lines += ["## Every pair of one recipe's cross-validations (built-in data)", "", markdown_table(table), ""]
    text = "\n".join(lines)
    print(text)
    target = BENCH_DIR / ("verdicts-real.md" if args.skip_simulation else "verdicts.md")
    write_text(target, text)
    print(f"written: {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
