"""Fetch the built-in dataset from its public URLs, another base URL or a local mirror folder.

Every file is checked against the manifest's SHA-256 and written under a temporary name, so a broken or
interrupted download never looks complete; a second run only fetches what is missing or wrong.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import requests

from plantlib.data.manifest import ManifestEntry, read_manifest, sha256_of
from plantlib.errors import FetchError
from plantlib.io import atomic_path, remove_stale_temporaries
from plantlib.paths import builtin_data_dir, manifest_path
from plantlib.progress import progress

SOURCE_ENV = "PLANTLIB_DATA_SOURCE"
HOW_TO_USE_A_MIRROR = (
    f"point at a local copy with `plantlib fetch-data --source /path/to/mirror` or `export {SOURCE_ENV}="
    "/path/to/mirror` (a folder holding dandelion/ and grass/), or at another base URL the same way"
)


class _RetryableError(Exception):
    """A failure worth another try: a wrong hash or a transient server error."""


class SourceUnreachable(Exception):
    """The source could not be contacted at all (offline, DNS failure, refused connection)."""


@dataclass
class FetchReport:
    dest: Path
    source: str
    already_present: int = 0
    fetched: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.already_present + len(self.fetched)

    def summary(self) -> str:
        return (
            f"{self.total} verified images in {self.dest}: {len(self.fetched)} fetched "
            f"({len(self.repaired)} replaced a wrong file), {self.already_present} already present"
        )


def resolve_source(source: str | os.PathLike[str] | None) -> str | None:
    """The explicit source, else `$PLANTLIB_DATA_SOURCE`, else None (the manifest's own URLs)."""
    chosen = source if source not in (None, "") else os.environ.get(SOURCE_ENV) or None
    return None if chosen is None else str(chosen)


def _is_url(source: str) -> bool:
    return urlparse(source).scheme in {"http", "https"}


def _local_folder(source: str) -> Path:
    parsed = urlparse(source)
    folder = Path(parsed.path if parsed.scheme == "file" else source).expanduser()
    if not folder.is_dir():
        raise FetchError(f"mirror folder {folder} does not exist; {HOW_TO_USE_A_MIRROR}")
    return folder


def _is_intact(path: Path, entry: ManifestEntry) -> bool:
    return path.is_file() and path.stat().st_size == entry.size and sha256_of(path) == entry.sha256


class _Fetcher:
    """Reads one manifest entry's bytes from the chosen source, retrying transient failures."""

    def __init__(self, source: str | None, retries: int, timeout_s: float) -> None:
        self.source = source
        self.retries = retries
        self.timeout_s = timeout_s
        self.mirror = _local_folder(source) if source and not _is_url(source) else None
        self.session = requests.Session() if self.mirror is None else None

    def describe(self) -> str:
        return str(self.mirror or self.source or "the manifest's URLs (GitHub)")

    def location(self, entry: ManifestEntry) -> str:
        if self.mirror is not None:
            return str(self.mirror / entry.relpath)
        if self.source:
            return f"{self.source.rstrip('/')}/{entry.relpath}"
        return entry.url

    def read(self, entry: ManifestEntry, target: Path) -> None:
        """Put the verified bytes of `entry` at `target` (atomically), or raise FetchError."""
        location = self.location(entry)
        problem = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(min(0.25 * 2**attempt, 4.0))
            try:
                with atomic_path(target) as tmp:
                    self._copy_to(location, tmp)
                    actual = sha256_of(tmp)
                    if actual != entry.sha256:
                        raise _RetryableError(
                            f"SHA-256 {actual[:12]}… does not match the manifest's {entry.sha256[:12]}…"
                        )
                return
            except _RetryableError as error:
                problem = str(error)  # atomic_path dropped the temporary file; `target` is untouched
        raise FetchError(f"{location}: {problem} (after {self.retries} tries)")

    def _copy_to(self, location: str, tmp: Path) -> None:
        if self.mirror is not None:
            try:
                shutil.copyfile(location, tmp)
            except FileNotFoundError as error:
                raise FetchError(f"{location} is missing from the mirror") from error
            return
        assert self.session is not None
        try:
            response = self.session.get(location, timeout=self.timeout_s)
        except (requests.ConnectionError, requests.Timeout) as error:
            raise SourceUnreachable(f"{location}: {error.__class__.__name__}") from error
        if response.status_code == 429 or response.status_code >= 500:
            raise _RetryableError(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise FetchError(f"{location}: HTTP {response.status_code}")
        tmp.write_bytes(response.content)


def fetch_dataset(
    dest: Path | None = None,
    source: str | os.PathLike[str] | None = None,
    manifest: Path | None = None,
    workers: int = 8,
    retries: int = 3,
    timeout_s: float = 30.0,
    show_progress: bool = True,
) -> FetchReport:
    """Make `dest` hold every file of the manifest, verified; fetch only what is missing or wrong."""
    dest = Path(dest or builtin_data_dir())
    entries = read_manifest(manifest or manifest_path())
    fetcher = _Fetcher(resolve_source(source), retries, timeout_s)
    if dest.is_dir():
        remove_stale_temporaries(dest)  # left by a fetch that was killed mid-write
    report = FetchReport(dest=dest, source=fetcher.describe())
    todo: list[ManifestEntry] = []
    for entry in entries:
        target = dest / entry.relpath
        if _is_intact(target, entry):
            report.already_present += 1
        else:
            todo.append(entry)
            if target.exists():
                report.repaired.append(entry.relpath)
    if not todo:
        return report

    # One file first: an offline machine gets one clear error at once instead of hundreds of retries.
    try:
        _fetch_with_retries(fetcher, todo[0], dest)
    except SourceUnreachable as error:
        raise FetchError(f"cannot reach {fetcher.describe()} ({error}); {HOW_TO_USE_A_MIRROR}") from error
    report.fetched.append(todo[0].relpath)

    failures: list[str] = []
    bar = progress(total=len(todo), initial=1, desc=f"fetch {dest.name}", unit="img", disable=not show_progress)
    with bar, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(_fetch_with_retries, fetcher, entry, dest): entry for entry in todo[1:]}
        for future in as_completed(futures):
            entry = futures[future]
            try:
                future.result()
                report.fetched.append(entry.relpath)
            except (FetchError, SourceUnreachable, OSError) as error:
                failures.append(str(error))
            bar.update(1)
    if failures:
        shown = "\n  ".join(failures[:10]) + ("\n  …" if len(failures) > 10 else "")
        raise FetchError(
            f"{len(failures)} of {len(entries)} files could not be fetched and verified "
            f"({report.total} are fine; run again to retry only the rest):\n  {shown}"
        )
    return report


def _fetch_with_retries(fetcher: _Fetcher, entry: ManifestEntry, dest: Path) -> None:
    last: Exception | None = None
    for attempt in range(fetcher.retries):
        try:
            fetcher.read(entry, dest / entry.relpath)
            return
        except SourceUnreachable as error:
            last = error
            time.sleep(min(0.25 * 2**attempt, 4.0))
    assert last is not None
    raise last


def dataset_is_complete(dest: Path | None = None, manifest: Path | None = None) -> bool:
    """Cheap check (names and sizes) that every manifest file is present; hashes are checked on fetch."""
    dest = Path(dest or builtin_data_dir())
    entries = read_manifest(manifest or manifest_path())
    return all((dest / e.relpath).is_file() and (dest / e.relpath).stat().st_size == e.size for e in entries)
