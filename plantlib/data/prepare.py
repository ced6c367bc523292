"""One call from a config to ready-to-use data: fetched, scanned, de-duplicated, split, reported."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from plantlib.config import RunConfig
from plantlib.data.duplicates import DuplicateReport, find_duplicates
from plantlib.data.fetch import dataset_is_complete, fetch_dataset
from plantlib.data.names import file_in
from plantlib.data.overrides import (
    AppliedOverrides,
    LabelOverrides,
    apply_overrides,
    overrides_file_for,
    read_overrides,
)
from plantlib.data.scan import DataWarning, ScanResult, scan_dataset
from plantlib.data.split import (
    MIN_IMAGES_PER_CLASS,
    check_split_matches,
    classes_missing_from_splits,
    default_split_file,
    load_split,
    make_split,
    save_split,
)
from plantlib.errors import DataError
from plantlib.io import write_json
from plantlib.paths import builtin_data_dir, data_root


@dataclass
class PreparedData:
    """Everything a run or notebook needs to know about its data."""

    data_dir: Path
    classes: list[str]
    scan: ScanResult
    duplicates: DuplicateReport
    split: pd.DataFrame  # path, label, split, group
    split_file: Path
    split_was_new: bool
    report_file: Path
    # What this run's "test" rows are: the test split, or a cross-validation fold's held-out part.
    held_out_name: str = "test"
    overrides: AppliedOverrides | None = None  # the label overrides applied after the scan, if any

    def frame(self, split: str) -> pd.DataFrame:
        """Rows of one split (`train`, `val` or `test`) with absolute paths and label indices."""
        rows = self.split[self.split["split"] == split].copy()
        rows["file"] = [file_in(self.data_dir, p) for p in rows["path"]]
        rows["target"] = rows["label"].map({c: i for i, c in enumerate(self.classes)})
        return rows.reset_index(drop=True)

    def report(self) -> dict[str, Any]:
        """The data report: counts, skipped files with reasons, duplicate groups, split sizes."""
        return data_report(self)


def resolve_data_dir(config: RunConfig) -> Path:
    """The configured folder, or the built-in dataset (fetched first when any file is missing)."""
    if config.data_dir is not None:
        return Path(config.data_dir).expanduser()
    target = builtin_data_dir()
    if not dataset_is_complete(target):
        print(fetch_dataset(target).summary())
    return target


def split_file_for(config: RunConfig, data_dir: Path, overrides: LabelOverrides | None = None) -> Path:
    """The split file `config` uses for the images in `data_dir`: its own `split_file`, or the default name
    (one per override file content, so adding overrides never makes the split without them stale)."""
    if config.split_file:
        return Path(config.split_file)
    tag = overrides.tag if overrides is not None else ""
    return default_split_file(data_dir, config.effective_split_seed, config.val_fraction, config.test_fraction, tag)


def overrides_for(config: RunConfig, data_dir: Path) -> LabelOverrides | None:
    """The label overrides `config` applies to `data_dir` (`RunConfig.label_overrides`), or None."""
    path = overrides_file_for(config.label_overrides, data_dir)
    return read_overrides(path) if path is not None else None


def usable_images(scan: ScanResult, overrides: LabelOverrides | None) -> tuple[pd.DataFrame, AppliedOverrides | None]:
    """The scan's usable images with the label overrides applied (announced in one line), and what changed."""
    if overrides is None:
        return scan.images, None
    images, applied = apply_overrides(scan.images, overrides, scan.classes)
    print(applied.summary())
    if images["label"].nunique() < 2:
        raise DataError(f"after {applied.summary()}, fewer than 2 classes are left; remove some overrides")
    return images, applied


def prepare_data(config: RunConfig, show_progress: bool = True) -> PreparedData:
    """Fetch (built-in data only), scan, group duplicates and load or make the split for `config`."""
    data_dir = resolve_data_dir(config)
    scan = scan_dataset(data_dir, show_progress=show_progress)
    overrides = overrides_for(config, data_dir)
    images, applied = usable_images(scan, overrides)
    duplicates = find_duplicates(images, max_distance=config.near_duplicate_distance)
    split_file = split_file_for(config, data_dir, overrides)
    is_new = config.new_split or not split_file.is_file()
    if is_new:
        split = make_split(
            images, duplicates.group_of, config.val_fraction, config.test_fraction, config.effective_split_seed
        )
        save_split(split, split_file)
    else:
        split = load_split(split_file)
        check_split_matches(split, images, split_file)
    warn_about_missing_classes(split, split_file, is_new)
    prepared = PreparedData(
        data_dir=data_dir,
        classes=sorted(images["label"].unique().tolist()),
        scan=scan,
        duplicates=duplicates,
        split=split,
        split_file=split_file,
        split_was_new=is_new,
        report_file=data_root() / "reports" / f"{split_file.stem}-data-report.json",
        overrides=applied,
    )
    write_json(prepared.report_file, data_report(prepared))
    return prepared


def warn_about_missing_classes(split: pd.DataFrame, split_file: Path, is_new: bool) -> None:
    """Say loudly when a class has no validation or test image: its accuracy would silently go unmeasured."""
    missing = classes_missing_from_splits(split)
    if not missing:
        return
    counts = split["label"].value_counts()
    listed = "; ".join(f"{label} ({counts[label]} images): none in {' or '.join(s)}" for label, s in missing.items())
    fix = (
        f"add images (a class needs {MIN_IMAGES_PER_CLASS} or more that are not near-duplicates of each other)"
        if is_new
        else f"make a new split (--new-split / new_split=True): {split_file} was made before classes were "
        "guaranteed one image per split, or add images"
    )
    warnings.warn(
        f"class(es) missing from a split, so validation and test metrics leave them out: {listed}. To fix, {fix}",
        DataWarning,
        stacklevel=3,
    )


def data_report(prepared: PreparedData) -> dict[str, Any]:
    scan, dups, split = prepared.scan, prepared.duplicates, prepared.split
    crossing = [g for g in dups.near_groups if split.loc[split["path"].isin(g), "split"].nunique() > 1]
    return {
        "data_dir": str(prepared.data_dir),
        "classes": prepared.classes,
        "files_seen": len(scan.records),
        "usable_images": len(scan.images),
        "class_counts": scan.class_counts(),
        "label_overrides": prepared.overrides.report() if prepared.overrides is not None else None,
        "images_used": len(split),
        "class_counts_used": {str(k): int(v) for k, v in split["label"].value_counts().sort_index().items()},
        "skipped": scan.skipped.to_dict(orient="records"),
        "exact_duplicate_groups": dups.exact_groups,
        "near_duplicate_groups": dups.near_groups,
        "near_duplicate_distance": dups.max_distance,
        "duplicates_summary": dups.summary(),
        "split_file": str(prepared.split_file),
        "split_counts": {
            s: {str(k): int(v) for k, v in split[split["split"] == s]["label"].value_counts().items()}
            for s in ("train", "val", "test")
        },
        "groups_crossing_splits": crossing,
        "classes_missing_from_splits": classes_missing_from_splits(split),
    }
