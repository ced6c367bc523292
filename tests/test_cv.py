"""Cross-validation folds and paired comparisons: stratified, group-respecting, every image held out once."""

from __future__ import annotations

import itertools
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
    compare_items,
    load_evaluated,
    pairwise_table,
    summary_table,
)
from plantlib.experiments.cv import assign_folds, cross_validate, fold_split, pooled_metrics
from plantlib.experiments.stats import corrected_t_test, holm_levels, mcnemar_test
from plantlib.inference.predictor import evaluate_split, load_model
from plantlib.runs import read_cv_info
from plantlib.training.build import describe_run
from plantlib.training.trainer import Callback
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
    # the fold's evaluated part is its held-out fold, and its run says so (the test split is never evaluated)
    facts = json.loads((fold_run / "run.json").read_text())
    assert facts["held_out_name"] == "held-out" and facts["sizes"]["test"] == int(result.folds["n"][0])
    assert f"/ {facts['sizes']['test']} held-out images" in describe_run(fold_run, facts, 1, 1)

    again = cross_validate(config, cv_dir=result.cv_dir, callbacks=[counter], show_progress=False)
    assert counter.fits == 3  # finished folds are reused, not trained again
    assert again.metrics["accuracy"] == result.metrics["accuracy"]


def test_repeats_train_with_their_own_seeds_on_folds_the_seeds_do_not_move(tmp_path: Path) -> None:
    data_dir = write_dataset(tmp_path / "d", {"ant": 10, "bee": 10})
    config = tiny_config(data_dir, tmp_path / "cv", backbone="resnet18", pretrained=False, image_size=48, epochs=1)
    result = cross_validate(config, folds=2, seeds=[3, 4], show_progress=False)
    info = json.loads((result.cv_dir / "cv.json").read_text())
    assert info["seeds"] == [3, 4] and info["repeats"] == 2 and info["fold_seed"] == config.effective_split_seed
    for repeat, seed in enumerate((3, 4)):
        fold_config = json.loads((result.cv_dir / f"repeat{repeat}-fold0" / "config.json").read_text())
        assert fold_config["seed"] == seed and fold_config["split_seed"] == config.effective_split_seed
    folds = pd.read_csv(result.cv_dir / "folds.csv")
    expected = assign_folds(folds[["path", "label", "group"]], 2, 2, config.effective_split_seed)
    assert folds["fold_r0"].tolist() == expected["fold_r0"].tolist()  # the fold seed alone decides the folds
    per_repeat = result.oof.assign(ok=result.oof["true"] == result.oof["predicted"]).groupby("repeat")["ok"].mean()
    assert result.metrics["accuracy"] == pytest.approx(per_repeat.mean())  # averaged, not an ensemble's score
    with pytest.raises(ConfigError, match="give distinct non-negative integers"):
        cross_validate(config, folds=2, seeds=[3, 3], show_progress=False)


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


def test_mcnemar_matches_statsmodels_and_its_interval_inverts_the_same_test() -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    for b, c in ((5, 0), (7, 2), (3, 8), (0, 0), (20, 9)):
        test = mcnemar_test(b, c, 200)
        expected = 1.0 if b + c == 0 else mcnemar([[0, b], [c, 0]], exact=True).pvalue
        assert test.p_value == pytest.approx(expected) and test.difference == pytest.approx((b - c) / 200)
        for confidence in (0.95, 0.99):
            low, high = test.interval(confidence)
            assert low <= test.difference <= high
            assert (low > 0 or high < 0) == (test.p_value <= 1 - confidence)  # excludes 0 exactly when it rejects
    assert mcnemar_test(7, 2, 29).p_value == pytest.approx(binomtest(7, 9, 0.5).pvalue)


def test_four_to_none_discordant_images_of_300_are_not_a_difference() -> None:
    # A right on 4 images B gets wrong, never the reverse: McNemar p = 2 * 0.5**4 = 0.125
    a = evaluated("a", [True] * 290 + [True] * 4 + [False] * 6)
    b = evaluated("b", [True] * 290 + [False] * 4 + [False] * 6)
    pairs = pairwise_table([a, b])
    row = pairs.iloc[0]
    assert row["p_value"] == pytest.approx(0.125) and row["verdict"] == NOT_DISTINGUISHABLE
    assert row["ci_low"] <= 0 <= row["ci_high"]


def test_the_corrected_t_test_matches_its_textbook_formula() -> None:
    from scipy import stats

    differences = np.array([0.02, 0.05, -0.01, 0.04, 0.03])
    ratio = 68 / 272  # a fold of 68 held out, 272 trained on
    test = corrected_t_test(differences, ratio)
    t = differences.mean() / np.sqrt((1 / 5 + ratio) * differences.var(ddof=1))
    assert test.p_value == pytest.approx(2 * stats.t.sf(abs(t), 4))
    naive = stats.ttest_1samp(differences, 0.0).pvalue
    assert test.p_value > naive  # the overlap of training sets widens the test
    low, high = test.interval(0.95)
    assert (low + high) / 2 == pytest.approx(differences.mean())
    assert (low > 0) == (test.p_value <= 0.05)


def test_holm_levels_agree_with_statsmodels_and_with_the_intervals() -> None:
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(3)
    for _ in range(8):  # statsmodels collects garbage on every call: a few cases
        p = rng.uniform(0, 0.1, size=rng.integers(1, 7))
        rejected, adjusted, levels = holm_levels(p)
        assert rejected.tolist() == multipletests(p, method="holm")[0].tolist()
        assert adjusted == pytest.approx(multipletests(p, method="holm")[1])
        assert ((p <= levels) == rejected).all()  # a test at its level rejects exactly the pairs Holm rejects


def test_holm_keeps_the_family_wise_false_difference_rate_of_four_equal_configurations_at_5_percent() -> None:
    # Four configurations of equal skill on 300 images: each image has its own difficulty, each configuration its
    # own luck. Uncorrected, some pair of the six is called different far more often than 5% of the time.
    rng = np.random.default_rng(2024)
    simulations, false_alarms, uncorrected = 1000, 0, 0
    for _ in range(simulations):
        chance = rng.beta(12, 0.6, size=300)  # most images easy (~0.95), a few hard
        correct = rng.random((4, 300)) < chance
        p_values = [
            mcnemar_test(int(np.sum(a & ~b)), int(np.sum(~a & b)), 300).p_value
            for a, b in itertools.combinations(correct, 2)
        ]
        false_alarms += int(holm_levels(p_values)[0].any())
        uncorrected += int(min(p_values) <= 0.05)
    assert false_alarms / simulations <= 0.05 < uncorrected / simulations


def test_the_interval_shown_never_disagrees_with_the_verdict() -> None:
    rng = np.random.default_rng(5)
    for _ in range(30):
        skills = rng.uniform(0.6, 0.95, size=3)
        items = [evaluated(f"s{i}", list(rng.random(120) < skill)) for i, skill in enumerate(skills)]
        for row in pairwise_table(items).itertuples():
            excludes_zero = row.ci_low > 0 or row.ci_high < 0
            assert excludes_zero == (row.verdict != NOT_DISTINGUISHABLE), row


def test_verdicts_name_a_winner_only_when_it_beats_every_other_one_after_correction() -> None:
    strong = evaluated("strong", [True] * 50)
    weak = evaluated("weak", [True] * 20 + [False] * 30)
    close = evaluated("close", [True] * 49 + [False])
    comparison = compare_items([strong, weak, close])
    pairs = comparison.pairs
    verdicts = dict(zip(zip(pairs["a"], pairs["b"], strict=True), pairs["verdict"], strict=True))
    assert verdicts[("strong", "weak")] == "strong better than weak"
    assert verdicts[("weak", "close")] == "weak worse than close"
    assert verdicts[("strong", "close")] == NOT_DISTINGUISHABLE
    summary = summary_table([strong, weak, close])
    assert summary["n"].tolist() == [50, 50, 50]
    assert best_configuration(summary, pairs) is None and comparison.winner is None
    # the sentence says exactly which pairs differ
    assert comparison.sentence == (
        "No configuration beats all others; strong better than weak; weak worse than close "
        "(Holm's correction over 3 pairs); the other 1 pair is not distinguishable."
    )
    two = compare_items([strong, weak])
    assert two.winner == "strong" and two.sentence.startswith("strong is better than every other configuration")
    same = compare_items([close, evaluated("twin", [True] * 49 + [False])])
    assert (
        same.sentence
        == "No pair differs: both configurations are not distinguishable at 95% (Holm's correction over 1 pair)."
    )


def cv_evaluated(name: str, accuracy_per_fold: list[list[float]], n_per_fold: int = 20, **cv: object) -> Evaluated:
    """A cross-validation's out-of-fold predictions: repeat r, fold k right on the given share of its images."""
    rows = []
    for repeat, accuracies in enumerate(accuracy_per_fold):
        image = 0
        for fold, accuracy in enumerate(accuracies):
            right = round(accuracy * n_per_fold)
            for i in range(n_per_fold):
                ok = i < right
                rows.append(
                    {"path": f"img{image}", "true": "x", "predicted": "x" if ok else "y"}
                    | {"p_x": 0.8 if ok else 0.3, "p_y": 0.2 if ok else 0.7, "repeat": repeat, "fold": fold}
                )
                image += 1
    settings = {"folds": len(accuracy_per_fold[0]), "repeats": len(accuracy_per_fold), "fold_seed": 42}
    return Evaluated(name, pd.DataFrame(rows), Path(name), {"status": "finished", **settings, **cv})


def test_cross_validations_are_compared_fold_by_fold_with_the_corrected_t_test() -> None:
    a = cv_evaluated("a", [[0.9, 0.95, 0.85, 0.9, 0.95]])
    b = cv_evaluated("b", [[0.85, 0.9, 0.85, 0.85, 0.9]])
    row = pairwise_table([a, b]).iloc[0]
    expected = corrected_t_test([0.05, 0.05, 0.0, 0.05, 0.05], 20 / 80)
    assert row["test"] == "corrected t-test" and row["units"] == 5
    assert row["p_value"] == pytest.approx(expected.p_value) and row["difference"] == pytest.approx(0.04)


def test_compare_refuses_cross_validations_that_were_not_run_alike() -> None:
    one = cv_evaluated("one", [[0.9] * 5])
    three = cv_evaluated("three", [[0.9] * 5] * 3)
    with pytest.raises(PlantlibError, match="one has repeats=1 and three has repeats=3; rerun one with the same"):
        pairwise_table([one, three])
    other_seed = cv_evaluated("other", [[0.9] * 5], fold_seed=7)
    with pytest.raises(PlantlibError, match="fold_seed=42 and other has fold_seed=7"):
        pairwise_table([one, other_seed])
    four_folds = cv_evaluated("four", [[0.9] * 4], n_per_fold=25)
    with pytest.raises(PlantlibError, match="folds=5 and four has folds=4"):
        pairwise_table([one, four_folds])
    moved = cv_evaluated("moved", [[0.9] * 5])
    moved.predictions.loc[0, "fold"], moved.predictions.loc[25, "fold"] = 1, 0
    with pytest.raises(PlantlibError, match="hold out different images in some fold"):
        pairwise_table([one, moved])
    with pytest.raises(PlantlibError, match="one is a cross-validation and run a run on one split"):
        pairwise_table([one, evaluated("run", [True] * 100)])


def test_repeats_are_averaged_not_ensembled() -> None:
    # Three repeats that each get 4 of 10 images right, different ones: an average of their probabilities would
    # score 10 of 10 (an ensemble), the honest pooled accuracy is 0.4.
    rows = []
    for repeat in range(3):
        for i in range(10):
            ok = (i + 3 * repeat) % 10 < 4
            p_x = 0.9 if ok else 0.45
            rows.append({"path": f"i{i}", "true": "x", "predicted": "x" if ok else "y"} | {"repeat": repeat})
            rows[-1] |= {"fold": i % 2, "p_x": p_x, "p_y": 1 - p_x}
    oof = pd.DataFrame(rows)
    metrics = pooled_metrics(oof, ["x", "y"])
    assert metrics["accuracy"] == pytest.approx(0.4) and metrics["repeats"] == 3
    low, high = metrics["ci95"]["accuracy"]
    assert low < 0.4 < high


def test_comparing_different_images_is_refused(tmp_path: Path) -> None:
    a, b = evaluated("a", [True] * 10), evaluated("b", [True] * 11)
    with pytest.raises(PlantlibError, match="were not evaluated on the same images"):
        pairwise_table([a, b])


def test_compare_cli_reads_cv_directories(tmp_path: Path) -> None:
    for name, correct in (("good", [True] * 40), ("bad", [True] * 10 + [False] * 30)):
        folder = tmp_path / name
        folder.mkdir()
        frame = evaluated(name, correct).predictions.assign(repeat=0, fold=np.arange(40) % 5)
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
    # Where and how it ran says nothing about the recipe; nor does a field of an earlier version.
    executed = {"backbone": "b", "device": "cpu", "cache_memory_mb": 1.0, "extra": {"trial": 3}, "tracking_parent": "x"}
    assert configuration_name({**executed, "dropout": 0.3}, Path("y")) == "b, dropout=0.3 (y)"


def test_a_finished_cross_validation_is_reused_for_the_same_recipe_data_and_version(tmp_path: Path) -> None:
    data_dir = write_dataset(tmp_path / "d", {"ant": 9, "bee": 9})
    config = tiny_config(data_dir, tmp_path / "cv", backbone="resnet18", pretrained=False, image_size=32, epochs=1)
    counter = CountFits()
    first = cross_validate(config, folds=2, callbacks=[counter], show_progress=False)
    assert counter.fits == 2 and read_cv_info(first.cv_dir)["content_key"]

    # how it runs does not matter (an execution field); the same recipe on the same images is found again
    again = cross_validate(config.replace(cache_memory_mb=8.0), folds=2, callbacks=[counter], show_progress=False)
    assert counter.fits == 2 and again.cv_dir == first.cv_dir
    assert again.metrics["accuracy"] == first.metrics["accuracy"] and len(again.oof) == len(first.oof)

    # what it learns does: another recipe, other settings, other image bytes, or rerun=True train anew
    other_recipe = cross_validate(config.replace(learning_rate=0.01), folds=2, callbacks=[counter], show_progress=False)
    other_folds = cross_validate(config, folds=3, callbacks=[counter], show_progress=False)
    forced = cross_validate(config, folds=2, callbacks=[counter], show_progress=False, rerun=True)
    assert counter.fits == 2 + 2 + 3 + 2
    assert len({first.cv_dir, other_recipe.cv_dir, other_folds.cv_dir, forced.cv_dir}) == 4
    image = next((data_dir / "ant").iterdir())
    pattern_image(1234).save(image)  # same name, new content
    edited = cross_validate(config, folds=2, callbacks=[counter], show_progress=False)
    assert counter.fits == 2 + 2 + 3 + 2 + 2 and edited.cv_dir not in (first.cv_dir, forced.cv_dir)
