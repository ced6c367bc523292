"""The committed manifest of the built-in dataset: what each file is, where it comes from, its SHA-256."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from plantlib.errors import DataError
from plantlib.io import atomic_write

SOURCE_REPO_RAW = "https://raw.githubusercontent.com/btphan95/greenr-airflow/master/data"
MANIFEST_COLUMNS = ("class", "file", "url", "sha256", "bytes")


@dataclass(frozen=True)
class ManifestEntry:
    label: str
    file: str
    url: str
    sha256: str
    size: int

    @property
    def relpath(self) -> str:
        """Path relative to the dataset folder (and to any mirror of it)."""
        return f"{self.label}/{self.file}"


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> list[ManifestEntry]:
    if not Path(path).is_file():
        raise DataError(f"manifest {path} is missing; restore it with `git checkout data/manifest.csv`")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"manifest {path} lacks columns {sorted(missing)}; expected {MANIFEST_COLUMNS}")
        return [
            ManifestEntry(row["class"], row["file"], row["url"], row["sha256"], int(row["bytes"])) for row in reader
        ]


def build_manifest(mirror: Path, base_url: str = SOURCE_REPO_RAW) -> list[ManifestEntry]:
    """Describe every image of a folder-per-class mirror, with its URL under `base_url`."""
    entries = []
    for class_dir in sorted(p for p in Path(mirror).iterdir() if p.is_dir()):
        for file in sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            entries.append(
                ManifestEntry(
                    label=class_dir.name,
                    file=file.name,
                    url=f"{base_url}/{class_dir.name}/{file.name}",
                    sha256=sha256_of(file),
                    size=file.stat().st_size,
                )
            )
    return entries


def write_manifest(entries: list[ManifestEntry], path: Path) -> None:
    def write(handle) -> None:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for e in entries:
            writer.writerow([e.label, e.file, e.url, e.sha256, e.size])

    atomic_write(Path(path), write)
