"""Find a folder-per-class dataset's images and decode every one once to check it.

Unusable files are skipped with a warning and listed with the reason; results are cached by path, size and
modification time so a second scan of the same folder is quick.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import imagehash
import pandas as pd

from plantlib.data.images import IMAGE_EXTENSIONS, ImageDecodeError, load_rgb
from plantlib.data.manifest import sha256_of
from plantlib.data.names import as_text
from plantlib.errors import DataError
from plantlib.io import write_json
from plantlib.paths import cache_dir as default_cache_dir
from plantlib.progress import progress

CACHE_VERSION = 1


class DataWarning(UserWarning):
    """Files were skipped or classes dropped; the data report lists them."""


@dataclass
class ImageRecord:
    """What the scan learnt about one file; `ok` False means it is skipped for `reason`."""

    path: str  # relative to the data folder, with forward slashes (`names.as_text`: bytes that are not UTF-8 escaped)
    label: str
    ok: bool
    reason: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    bytes: int = 0
    sha256: str = ""
    phash: str = ""


@dataclass
class ScanResult:
    data_dir: Path
    classes: list[str]  # classes with at least one usable image, sorted
    records: pd.DataFrame  # one row per file looked at, usable or not
    cache_hits: int = 0

    @property
    def images(self) -> pd.DataFrame:
        """The usable images: path, label and their facts."""
        return self.records[self.records["ok"]].reset_index(drop=True)

    @property
    def skipped(self) -> pd.DataFrame:
        return self.records.loc[~self.records["ok"], ["path", "label", "reason"]].reset_index(drop=True)

    def class_counts(self) -> dict[str, int]:
        return {c: int(n) for c, n in self.images["label"].value_counts().sort_index().items()}


def check_data_dir(data_dir: Path) -> list[Path]:
    """The class folders of `data_dir`, or a DataError that says what a usable folder looks like."""
    data_dir = Path(data_dir)
    layout = "a folder with one sub-folder of images per class, e.g. data/dandelion/*.jpg and data/grass/*.jpg"
    if not data_dir.exists():
        raise DataError(f"data dir {data_dir} does not exist; pass {layout}")
    if not data_dir.is_dir():
        raise DataError(f"data dir {data_dir} is a file, not a folder; pass {layout}")
    class_dirs = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        found = ", ".join(p.name for p in class_dirs) or "none"
        raise DataError(f"data dir {data_dir} needs 2 or more class sub-folders (found: {found}); pass {layout}")
    return class_dirs


def relative_name(path: Path, data_dir: Path) -> str:
    """How tables name a file: relative to the data folder, forward slashes, as valid text (`names.as_text`)."""
    return as_text(path.relative_to(data_dir).as_posix())


def _candidates(data_dir: Path, class_dirs: list[Path]) -> tuple[list[tuple[Path, str]], list[ImageRecord]]:
    """Image-named files per class, and records for everything else found (skipped, with why)."""
    images: list[tuple[Path, str]] = []
    ignored: list[ImageRecord] = []
    for class_dir in class_dirs:
        label = as_text(class_dir.name)
        for path in sorted(class_dir.rglob("*")):
            if path.is_dir():
                continue
            rel = relative_name(path, data_dir)
            if any(part.startswith(".") for part in path.relative_to(class_dir).parts):
                ignored.append(ImageRecord(rel, label, False, "hidden file"))
            elif path.suffix.lower() not in IMAGE_EXTENSIONS:
                suffix = as_text(path.suffix)
                ignored.append(ImageRecord(rel, label, False, f"not an image file name ({suffix})"))
            else:
                images.append((path, label))
    for path in sorted(data_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            ignored.append(ImageRecord(as_text(path.name), "", False, "not inside a class folder"))
    return images, ignored


def _inspect(path: Path, label: str, data_dir: Path) -> ImageRecord:
    rel = relative_name(path, data_dir)
    try:
        rgb, facts = load_rgb(path)
        return ImageRecord(
            path=rel,
            label=label,
            ok=True,
            width=int(facts["width"]),
            height=int(facts["height"]),
            mode=str(facts["mode"]),
            format=str(facts["format"]),
            bytes=path.stat().st_size,
            sha256=sha256_of(path),
            phash=str(imagehash.phash(rgb)),
        )
    except ImageDecodeError as error:
        return ImageRecord(rel, label, False, str(error))


def _stamp(path: Path) -> list[int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def cache_file_for(data_dir: Path, cache_dir: Path | None = None) -> Path:
    key = hashlib.sha1(os.fsencode(Path(data_dir).resolve())).hexdigest()[:12]  # any name the disk allows
    return Path(cache_dir or default_cache_dir()) / f"scan-{Path(data_dir).name}-{key}.json"


def _load_cache(path: Path) -> dict[str, dict]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return payload.get("entries", {}) if payload.get("version") == CACHE_VERSION else {}


def scan_dataset(
    data_dir: Path,
    cache_dir: Path | None = None,
    workers: int | None = None,
    show_progress: bool = True,
) -> ScanResult:
    """Decode every image under `data_dir` once (or reuse the cached verdict) and return what is usable."""
    data_dir = Path(data_dir)
    class_dirs = check_data_dir(data_dir)
    candidates, ignored = _candidates(data_dir, class_dirs)
    cache_path = cache_file_for(data_dir, cache_dir)
    cached = _load_cache(cache_path)

    records: list[ImageRecord] = []
    todo: list[tuple[Path, str]] = []
    stamps: dict[str, list[int] | None] = {}
    for path, label in candidates:
        rel = relative_name(path, data_dir)
        stamps[rel] = _stamp(path)
        entry = cached.get(rel)
        if entry and stamps[rel] is not None and entry["stamp"] == stamps[rel] and entry["record"]["label"] == label:
            records.append(ImageRecord(**entry["record"]))
        else:
            todo.append((path, label))
    hits = len(records)
    if todo:
        bar = progress(total=len(todo), desc=f"scan {data_dir.name}", unit="img", disable=not show_progress)
        with bar, ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            for record in pool.map(lambda item: _inspect(item[0], item[1], data_dir), todo):
                records.append(record)
                bar.update(1)
        write_json(
            cache_path,
            {
                "version": CACHE_VERSION,
                "data_dir": str(data_dir.resolve()),
                "entries": {
                    r.path: {"stamp": stamps[r.path], "record": asdict(r)}
                    for r in records
                    if stamps.get(r.path) is not None
                },
            },
        )

    all_records = sorted(records + ignored, key=lambda r: r.path)
    frame = pd.DataFrame([asdict(r) for r in all_records], columns=list(ImageRecord.__dataclass_fields__))
    usable = frame[frame["ok"]]
    classes = sorted(usable["label"].unique().tolist())
    empty = sorted({as_text(p.name) for p in class_dirs} - set(classes))
    _warn_about(frame, empty, data_dir)
    if len(classes) < 2:
        raise DataError(
            f"data dir {data_dir} has usable images in {len(classes)} class(es) ({', '.join(classes) or 'none'}); "
            "training needs 2 or more classes with images. Add images or fix the files the data report lists."
        )
    return ScanResult(data_dir=data_dir, classes=classes, records=frame, cache_hits=hits)


def _warn_about(frame: pd.DataFrame, empty_classes: list[str], data_dir: Path) -> None:
    skipped = frame[~frame["ok"]]
    if len(skipped):
        lines = [f"{row.path}: {row.reason}" for row in skipped.head(10).itertuples()]
        more = f"\n  … and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        warnings.warn(
            f"skipped {len(skipped)} of {len(frame)} files in {data_dir}:\n  " + "\n  ".join(lines) + more,
            DataWarning,
            stacklevel=3,
        )
    if empty_classes:
        warnings.warn(
            f"class folder(s) {', '.join(empty_classes)} in {data_dir} hold no usable image and are left out",
            DataWarning,
            stacklevel=3,
        )
