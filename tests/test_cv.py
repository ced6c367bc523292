"""Cross-validation folds and paired comparisons: stratified, group-respecting, every image held out once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from plantlib.data import prepare_data
from plantlib.errors import ConfigError, PlantlibError
from plantlib.experiments.compare import (
    NOT_DISTINGUISHABLE,
    Evaluated,
    best_configuration,
    load_evaluated,
    mcnemar_exact_p,
    paired_bootstrap_ci,
    pairwise_table,
    summary_table,
)
from plantlib.experiments.cv import assign_folds, cross_validate, fold_split
from plantlib.inference import evaluate_split, load_model
from plantlib.train import Callback
from tests.conftest import pattern_image, run_cli, tiny_config, write_dataset


def pool_with_groups() -> pd.DataFrame:
    """60 'a' and 40 'b' images; every fifth image of each class has two near-copies in its group."""
    rows, group = [], 0
    for label, count in (("a", 60), ("b", 40)):
        for i in range(count):
            copies = 3 if i % 5 == 0 else 1
            rows += [{"path": f"{label}/{i}-{c}.jpg", "label": label, "group": group} for c in range(copies)]
            group += 1
    return pd.DataFrame(rows)


def test_folds_are_stratified_keep_groups_whole_and_hold_each_image_out_once_per_repeat() -> None:
    pool = pool_with_groups()
    assert pool.groupby("group").size().max() == 3  # the fixture really has multi-image groups
    assigned = assign_folds(pool, folds=5, repeats=2, split_seed=7)
    for repeat in range(2):
        column = assigned[f"fold_r{repeat}"]
        assert sorted(column.unique()) == [0, 1, 2, 3, 4] and len(column) == len(pool)  # once each, no gaps
        assert (assigned.groupby("group")[f"fold_r{repeat}"].nunique() == 1).all()  # groups never cross folds
        shares = pd.crosstab(column, assigned["label"], normalize="index")["a"]
        assert shares.between(0.5, 0.7).all()  # each fold close to the pool's 0.6 share of class a
    assert not (assigned["fold_r0"] == assigned["fold_r1"]).all()  # repeats draw other folds
    again = assign_folds(pool, folds=5, repeats=2, split_seed=7)
    assert again.equals(assigned)  # the split seed fixes the folds
    assert not assign_folds(pool, folds=5, repeats=1, split_seed=8)["fold_r0"].equals(assigned["fold_r0"])


def test_a_folds_early_stopping_set_comes_from_its_training_part() -> None:
    assigned = assign_folds(pool_with_groups(), folds=4, repeats=1, split_seed=1)
    split = fold_split(assigned, repeat=0, fold=2, val_fraction=0.15, split_seed=1)
    held_out = set(assigned.loc[assigned["fold_r0"] == 2, "path"])
    assert set(split.loc[split["split"] == "test", "path"]) == held_out
    val = split[split["split"] == "val"]
    assert not set(val["path"]) & held_out and 0.08 < len(val) / len(split) < 0.25
    assert (split.groupby("group")["split"].nunique() == 1).all()
    assert set(val["label"]) == {"a", "b"}


def test_impossible_fold_counts_fail_with_the_fix() -> None:
    pool = pool_with_groups()
    with pytest.raises(ConfigError, match="folds=1 is not allowed; use 2 or more"):
        assign_folds(pool, 1, 1, 0)
    tiny = pd.concat([pool[pool["label"] == "a"].head(20), pool[pool["label"] == "b"].head(3)])
    with pytest.raises(ConfigError, match="smallest class has 3 pool images, fewer than folds=5; use at most 3"):
        assign_folds(tiny, 5, 1, 0)


class CountFits(Callback):
    def __init__(self) -> None:
        self.fits = 0

    def on_fit_start(self, trainer) -> None:
        self.fits += 1


def test_cross_validation_predicts_every_pool_image_once_and_resumes(tmp_path: Path) -> None:
    data_dir = write_dataset(tmp_path / "d", {"ant": 12, "bee": 12})
    # near-duplicates: two re-saved copies of one ant image must stay in one fold
    image = pattern_image(999)
    for name in ("dup-1.jpg", "dup-2.jpg"):
        image.save(data_dir / "ant" / name, quality=90)
    config = tiny_config(data_dir, tmp_path / "cv", backbone="resnet18", pretrained=False, image_size=48, epochs=1)
    counter = CountFits()
    result = cross_validate(config, folds=3, callbacks=[counter], show_progress=False)
    split = pd.read_csv(result.cv_dir / "folds.csv")
    test_images = set(prepare_data(config, show_progress=False).frame("test")["path"])
    assert test_images and not test_images & set(split["path"])  # the test split stays untouched
    assert counter.fits == 3 and len(result.folds) == 3
    oof = pd.read_csv(result.cv_dir / "oof.csv")
    assert sorted(oof["path"]) == sorted(split["path"])  # every pool image exactly once
    assert result.metrics["n"] == len(split) == len(oof)
    assert oof.groupby("path")["fold"].nunique().max() == 1
    assert oof.loc[oof["path"].str.startswith("ant/dup-"), "fold"].nunique() == 1
    summary = json.loads((result.cv_dir / "cv.json").read_text())
    assert summary["status"] == "finished" and summary["pooled"]["n"] == len(split)
    assert summary["per_fold"]["accuracy"]["mean"] == pytest.approx(result.folds["accuracy"].mean())

    fold_run = Path(result.folds["run_dir"][0])  # a fold's run works like any run: its split file is complete
    metrics, _ = evaluate_split(load_model(fold_run, engine="torch"), "test", save=False)
    assert metrics["n"] == int(result.folds["n"][0]) == int((oof["fold"] == 0).sum())
    assert set(pd.read_csv(fold_run / "split.csv").query("split == 'excluded'")["path"]) == test_images

    again = cross_validate(config, cv_dir=result.cv_dir, callbacks=[counter], show_progress=False)
    assert counter.fits == 3  # finished folds are reused, not trained again
    assert again.metrics["accuracy"] == result.metrics["accuracy"]


def evaluated(name: str, correct: list[bool]) -> Evaluated:
    """Predictions on images img0..imgN: all of class x; right where `correct` says so."""
    frame = pd.DataFrame(
        {
            "path": [f"img{i}" for i in range(len(correct))],
            "true": "x",
            "predicted": ["x" if ok else "y" for ok in correct],
            "p_x": [0.9 if ok else 0.1 for ok in correct],
            "p_y": [0.1 if ok else 0.9 for ok in correct],
        }
    )
    return Evaluated(name, frame, Path(name))


def test_mcnemar_matches_the_exact_binomial_on_discordant_pairs() -> None:
    a = np.array([True] * 5 + [True] * 10 + [False] * 3)
    b = np.array([False] * 5 + [True] * 10 + [False] * 3)
    assert mcnemar_exact_p(a, b) == pytest.approx(2 * 0.5**5)  # 5 discordant, all one way: 0.0625
    a2 = np.array([True] * 7 + [False] * 2 + [True] * 20)
    b2 = np.array([False] * 7 + [True] * 2 + [True] * 20)
    assert mcnemar_exact_p(a2, b2) == pytest.approx(binomtest(7, 9, 0.5).pvalue)
    assert mcnemar_exact_p(a2, a2) == 1.0


def test_paired_bootstrap_matches_the_normal_interval_on_a_large_case() -> None:
    # 200 images: A alone right on 60, B alone right on 20, both right on 100: difference 0.2
    a = np.array([True] * 60 + [False] * 20 + [True] * 100 + [False] * 20)
    b = np.array([False] * 60 + [True] * 20 + [True] * 100 + [False] * 20)
    d = a.astype(float) - b.astype(float)
    half = 1.96 * d.std(ddof=0) / np.sqrt(len(d))
    low, high = paired_bootstrap_ci(a, b)
    assert low == pytest.approx(0.2 - half, abs=0.01) and high == pytest.approx(0.2 + half, abs=0.01)
    assert paired_bootstrap_ci(a, a) == (0.0, 0.0)


def test_verdicts_name_a_winner_only_when_the_interval_excludes_zero() -> None:
    strong = evaluated("strong", [True] * 50)
    weak = evaluated("weak", [True] * 20 + [False] * 30)
    close = evaluated("close", [True] * 49 + [False])
    pairs = pairwise_table([strong, weak, close])
    verdicts = dict(zip(zip(pairs["a"], pairs["b"], strict=True), pairs["verdict"], strict=True))
    assert verdicts[("strong", "weak")] == "strong better than weak"
    assert verdicts[("weak", "close")] == "weak worse than close"
    assert verdicts[("strong", "close")] == NOT_DISTINGUISHABLE
    summary = summary_table([strong, weak, close])
    assert summary["n"].tolist() == [50, 50, 50]
    assert best_configuration(summary, pairs) is None  # strong does not beat close at 95%
    two = [strong, weak]
    assert best_configuration(summary_table(two), pairwise_table(two)) == "strong"


def test_comparing_different_images_is_refused(tmp_path: Path) -> None:
    a, b = evaluated("a", [True] * 10), evaluated("b", [True] * 11)
    with pytest.raises(PlantlibError, match="were not evaluated on the same images"):
        pairwise_table([a, b])


def test_compare_cli_reads_cv_directories(tmp_path: Path) -> None:
    for name, correct in (("good", [True] * 40), ("bad", [True] * 10 + [False] * 30)):
        folder = tmp_path / name
        folder.mkdir()
        frame = evaluated(name, correct).predictions.assign(repeat=0, fold=0)
        frame.to_csv(folder / "oof.csv", index=False)
        (folder / "cv.json").write_text(json.dumps({"config": {"backbone": name}}))
    loaded = load_evaluated(tmp_path / "good")
    assert loaded.name == "good (good)" and len(loaded.predictions) == 40
    done = run_cli("compare", str(tmp_path / "good"), str(tmp_path / "bad"))
    assert done.returncode == 0, done.stderr
    assert "good (good) better than bad (bad)" in done.stdout and "best: good (good)" in done.stdout


def test_configurations_are_named_by_the_recipe_fields_that_differ_from_the_defaults() -> None:
    from plantlib.experiments.compare import configuration_name

    config = {"backbone": "efficientnet_lite0", "mixup_alpha": 0.2, "data_dir": "/elsewhere", "epochs": 6}
    assert configuration_name(config, Path("cv/a")) == "efficientnet_lite0, mixup_alpha=0.2 (a)"
    many = {"backbone": "b", "dropout": 0.3, "epochs": 2, "seed": 1, "head": "linear"}
    assert configuration_name(many, Path("x")).endswith(" … (x)")
