"""Stratified train/val/test split that keeps near-duplicate groups whole, saved as a CSV and reused."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from plantlib.errors import DataError
from plantlib.io import atomic_write
from plantlib.paths import project_root, splits_dir

SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"  # in a split file: an image this split leaves out (e.g. the outer test set of a CV fold)
SPLIT_COLUMNS = ("path", "label", "split", "group")
MIN_IMAGES_PER_CLASS = len(SPLITS)  # one for each split: fewer, and a class cannot be validated and tested


def default_split_file(
    data_dir: Path, seed: int, val_fraction: float, test_fraction: float, overrides_tag: str = ""
) -> Path:
    """`data/splits/<folder>-<where>-seed<seed>-<train>-<val>-<test>[-overrides<tag>].csv`; stable across clones.

    Label overrides (`plantlib.data.overrides`) change the images a split describes, so each override file's
    content (`overrides_tag`) gets a split of its own and the split without overrides stays as it was.
    """
    data_dir = Path(data_dir).resolve()
    try:
        where = data_dir.relative_to(project_root()).as_posix()
    except ValueError:
        where = str(data_dir)
    key = hashlib.sha1(os.fsencode(where)).hexdigest()[:6]  # the bytes of the name, valid UTF-8 or not
    train = 1 - val_fraction - test_fraction
    shares = "-".join(f"{round(f * 100):g}" for f in (train, val_fraction, test_fraction))
    suffix = f"-overrides{overrides_tag}" if overrides_tag else ""
    return splits_dir() / f"{data_dir.name}-{key}-seed{seed}-{shares}{suffix}.csv"


def _targets(count: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Images of one class per split; rounding never leaves a class of 3 or more out of a split."""
    val = round(count * val_fraction)
    test = round(count * test_fraction)
    if count >= MIN_IMAGES_PER_CLASS:
        val, test = max(val, 1), max(test, 1)
        while count - val - test < 1:  # keep one image to train on
            if val >= test:
                val -= 1
            else:
                test -= 1
    return {"train": count - val - test, "val": val, "test": test}


def make_split(
    images: pd.DataFrame,
    group_of: dict[str, int],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 42,
) -> pd.DataFrame:
    """Assign every image to a split: per class, whole groups go where the target count is furthest off.

    Shuffling is seeded, so the same seed and images give the same split. A group whose images carry
    different labels is placed by its most common label (the data report lists such conflicts).
    """
    frame = images[["path", "label"]].copy()
    frame["group"] = frame["path"].map(group_of).astype(int)
    rng = np.random.default_rng(seed)
    assignment: dict[int, str] = {}
    group_label = frame.groupby("group")["label"].agg(lambda s: s.value_counts().index[0])
    group_size = frame.groupby("group").size()
    for label in sorted(frame["label"].unique()):
        group_ids = group_label[group_label == label].index.to_numpy()
        group_ids = group_ids[rng.permutation(len(group_ids))]
        # Big groups first, so the singletons at the end can even out the counts exactly.
        group_ids = sorted(group_ids, key=lambda g: -group_size[g])
        targets = _targets(int(group_size[group_ids].sum()), val_fraction, test_fraction)
        filled = dict.fromkeys(SPLITS, 0)
        for group in group_ids:
            split = max(SPLITS, key=lambda s: (targets[s] - filled[s]) / max(targets[s], 1))
            assignment[group] = split
            filled[split] += int(group_size[group])
    frame["split"] = frame["group"].map(assignment)
    return frame[list(SPLIT_COLUMNS)].sort_values(["split", "label", "path"]).reset_index(drop=True)


def save_split(split: pd.DataFrame, path: Path) -> None:
    atomic_write(Path(path), lambda handle: split.to_csv(handle, index=False, lineterminator="\n"))


def load_split(path: Path) -> pd.DataFrame:
    path = Path(path)
    try:
        # A class or file named "NA" or "null" is a name, not a missing value.
        split = pd.read_csv(path, dtype={"path": str, "label": str, "split": str}, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"split file {path} cannot be read ({error}); delete it or pass new_split=True") from error
    missing = set(SPLIT_COLUMNS) - set(split.columns)
    bad = set(split.get("split", pd.Series(dtype=str)).unique()) - {*SPLITS, EXCLUDED}
    if missing or bad:
        raise DataError(
            f"split file {path} is not a plantlib split (missing columns {sorted(missing)}, unknown splits "
            f"{sorted(bad)}); delete it or pass new_split=True"
        )
    return split


def check_split_matches(split: pd.DataFrame, images: pd.DataFrame, path: Path) -> None:
    """A saved split must describe exactly the usable images of the folder, or it is stale."""
    saved = set(zip(split["path"], split["label"], strict=True))
    current = set(zip(images["path"], images["label"], strict=True))
    if saved == current:
        return
    gone, new = saved - current, current - saved
    example = next(iter(sorted(gone or new)))[0]
    raise DataError(
        f"split file {path} does not match the images in the data folder ({len(gone)} listed images are gone "
        f"or unusable, {len(new)} images are new, e.g. {example}); make a new split with new_split=True "
        "(CLI: --new-split) or restore the images"
    )


def classes_missing_from_splits(split: pd.DataFrame) -> dict[str, list[str]]:
    """Per class that lacks some split, the splits that hold none of its images (e.g. {"rare": ["val", "test"]})."""
    present = set(zip(split["label"], split["split"], strict=True))
    missing = {label: [s for s in SPLITS if (label, s) not in present] for label in sorted(set(split["label"]))}
    return {label: splits for label, splits in missing.items() if splits}


def split_counts(split: pd.DataFrame) -> pd.DataFrame:
    """Images per split and class, with totals: the table notebooks and reports show."""
    table = pd.crosstab(split["split"], split["label"], margins=True, margins_name="total")
    order = [s for s in (*SPLITS, EXCLUDED, "total") if s in table.index]
    return table.loc[order]
