"""Label overrides: fix or drop an image's label without moving, renaming or deleting the image.

A CSV with a `path` column (relative to the data folder, as the split and the data report write it) and a
`label` column (a class name, or `exclude` to leave the image out); other columns (a reason, a reviewer) are kept
for people and ignored here. The data layer applies it right after the scan, so duplicates, the split, the folds
and every metric see the corrected labels; the images on disk stay exactly as they were.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from plantlib.errors import DataError

OVERRIDES_FILE = "label_overrides.csv"  # by default looked for beside the data folder: data/label_overrides.csv
EXCLUDE = "exclude"  # the label that leaves an image out of every split
OVERRIDE_COLUMNS = ("path", "label")
FORMAT_HINT = "a CSV with columns path,label (path relative to the data folder; label a class name or 'exclude')"


@dataclass(frozen=True)
class LabelOverrides:
    """An override file as read: where it is, the hash of its bytes, and its rows (path, label)."""

    file: Path
    sha256: str
    rows: pd.DataFrame

    @property
    def tag(self) -> str:
        """A short name for this content, carried by the default split file's name (`-overrides<tag>`)."""
        return self.sha256[:8]


@dataclass
class AppliedOverrides:
    """What an override file changed: relabelled images (path, given, label) and excluded paths."""

    file: Path
    sha256: str
    relabelled: list[dict[str, str]] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    unchanged: int = 0  # rows whose label is the folder's own

    @property
    def count(self) -> int:
        return len(self.relabelled) + len(self.excluded)

    def summary(self) -> str:
        return (
            f"{self.count} label override(s) applied from {self.file}: {len(self.relabelled)} relabelled, "
            f"{len(self.excluded)} excluded" + (f", {self.unchanged} already right" if self.unchanged else "")
        )

    def report(self) -> dict[str, Any]:
        """The data report's entry: the file, its content hash and every change."""
        return {
            "file": str(self.file),
            "sha256": self.sha256,
            "applied": self.count,
            "relabelled": self.relabelled,
            "excluded": self.excluded,
        }


def default_overrides_file(data_dir: Path) -> Path:
    """`label_overrides.csv` beside the data folder: `data/label_overrides.csv` for the built-in dataset."""
    return Path(data_dir).parent / OVERRIDES_FILE


def overrides_file_for(setting: str | None, data_dir: Path) -> Path | None:
    """The override file a config's `label_overrides` names: None looks for the default file, "" means none."""
    if setting is None:
        default = default_overrides_file(data_dir)
        return default if default.is_file() else None
    if not str(setting).strip():
        return None
    path = Path(setting).expanduser()
    if not path.is_file():
        raise DataError(f"label overrides file {path} does not exist; write {FORMAT_HINT}, or pass label_overrides=''")
    return path


def read_overrides(path: Path) -> LabelOverrides:
    """Read and check the shape of an override file; an empty file overrides nothing."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        rows = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True) if raw.strip() else None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"label overrides file {path} cannot be read ({error}); write {FORMAT_HINT}") from error
    if rows is None:
        rows = pd.DataFrame(columns=list(OVERRIDE_COLUMNS))
    missing = [c for c in OVERRIDE_COLUMNS if c not in rows.columns]
    if missing:
        raise DataError(f"label overrides file {path} lacks column(s) {', '.join(missing)}; write {FORMAT_HINT}")
    rows = rows.assign(path=rows["path"].map(_normal_path), label=rows["label"].str.strip())
    repeated = rows.loc[rows["path"].duplicated(), "path"].tolist()
    if repeated:
        raise DataError(f"label overrides file {path} lists {repeated[0]} more than once; keep one row per image")
    return LabelOverrides(path, hashlib.sha256(raw).hexdigest(), rows[list(OVERRIDE_COLUMNS)].reset_index(drop=True))


def _normal_path(text: str) -> str:
    """The form the scan gives a path: forward slashes, no leading './', no surrounding spaces."""
    text = text.strip().replace("\\", "/")
    return text[2:] if text.startswith("./") else text


def apply_overrides(
    images: pd.DataFrame, overrides: LabelOverrides, classes: list[str]
) -> tuple[pd.DataFrame, AppliedOverrides]:
    """`images` (path, label, ...) with the overrides' labels and without the excluded rows, and what changed.

    A row naming no usable image, or a label that is neither a class nor `exclude`, is an error that names the
    row (line number in the file) and the fix; nothing is applied then.
    """
    known = set(images["path"])
    allowed = set(classes) | {EXCLUDE}
    for line, row in enumerate(overrides.rows.itertuples(index=False), start=2):  # line 1 is the header
        where = f"label overrides file {overrides.file}, line {line}"
        if row.path not in known:
            raise DataError(
                f"{where}: {row.path!r} is not a usable image of the data folder; write its path relative to the "
                "data folder as the split file lists it (e.g. grass/00000048.jpg), or delete the row"
            )
        if row.label not in allowed:
            raise DataError(
                f"{where}: label {row.label!r} is not a class; use one of {', '.join(sorted(classes))} or {EXCLUDE}"
            )
    given = dict(zip(images["path"], images["label"], strict=True))
    wanted = dict(zip(overrides.rows["path"], overrides.rows["label"], strict=True))
    applied = AppliedOverrides(overrides.file, overrides.sha256)
    for path, label in sorted(wanted.items()):
        if label == EXCLUDE:
            applied.excluded.append(path)
        elif label != given[path]:
            applied.relabelled.append({"path": path, "given": given[path], "label": label})
        else:
            applied.unchanged += 1
    kept = images[~images["path"].isin(applied.excluded)].copy()
    kept["label"] = [wanted.get(path, label) for path, label in zip(kept["path"], kept["label"], strict=True)]
    return kept.reset_index(drop=True), applied
