"""Fetching from a mirror folder or a base URL: verified, atomic, repairing, and clear when offline."""

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from plantlib.data import fetch_dataset
from plantlib.data.manifest import build_manifest, read_manifest, sha256_of, write_manifest
from plantlib.errors import FetchError
from plantlib.paths import manifest_path
from tests.conftest import real_mirror, requires_mirror, run_cli, write_dataset


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A mirror of 2x6 images and a manifest of it (the project's manifest, in the isolated root)."""
    root = write_dataset(tmp_path / "mirror", {"dandelion": 6, "grass": 6})
    write_manifest(build_manifest(root, base_url="https://example.invalid/data"), manifest_path())
    return root


@pytest.fixture
def http_mirror(mirror: Path) -> Iterator[str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _all_verified(dest: Path) -> bool:
    return all(sha256_of(dest / e.relpath) == e.sha256 for e in read_manifest(manifest_path()))


def test_fetch_from_a_mirror_then_only_repairs_what_is_wrong(mirror: Path, tmp_path: Path) -> None:
    dest = tmp_path / "data"
    first = fetch_dataset(dest, source=mirror, show_progress=False)
    assert len(first.fetched) == 12 and _all_verified(dest)
    again = fetch_dataset(dest, source=mirror, show_progress=False)
    assert again.fetched == [] and again.already_present == 12

    (dest / "grass" / "0002.jpg").write_bytes(b"corrupted")
    (dest / "dandelion" / "0004.jpg").unlink()
    repaired = fetch_dataset(dest, source=mirror, show_progress=False)
    assert sorted(repaired.fetched) == ["dandelion/0004.jpg", "grass/0002.jpg"]
    assert repaired.repaired == ["grass/0002.jpg"] and _all_verified(dest)


def test_fetch_over_http_with_the_environment_variable(
    http_mirror: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANTLIB_DATA_SOURCE", http_mirror)
    report = fetch_dataset(tmp_path / "data", show_progress=False)
    assert report.total == 12 and _all_verified(tmp_path / "data")


def test_a_corrupt_mirror_file_is_never_written(mirror: Path, tmp_path: Path) -> None:
    (mirror / "grass" / "0001.jpg").write_bytes(b"bit rot")
    (mirror / "dandelion" / "0003.jpg").unlink()
    dest = tmp_path / "data"
    with pytest.raises(FetchError, match=r"2 of 12 files could not be fetched") as error:
        fetch_dataset(dest, source=mirror, retries=2, show_progress=False)
    assert "does not match the manifest" in str(error.value) and "missing from the mirror" in str(error.value)
    assert not (dest / "grass" / "0001.jpg").exists() and not (dest / "dandelion" / "0003.jpg").exists()
    assert sorted(p.name for p in dest.rglob("*") if p.is_file() and p.name.startswith(".")) == []
    assert len(list(dest.rglob("*.jpg"))) == 10


def test_offline_without_a_mirror_says_how_to_point_at_one(
    mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PLANTLIB_DATA_SOURCE", raising=False)
    with pytest.raises(FetchError, match=r"cannot reach .*--source /path/to/mirror.*PLANTLIB_DATA_SOURCE"):
        fetch_dataset(tmp_path / "data", source="http://127.0.0.1:9", retries=1, show_progress=False)


def test_cli_errors_are_one_line_without_traceback(mirror: Path, tmp_path: Path) -> None:
    result = run_cli("fetch-data", "--source", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "mirror folder" in result.stderr and "does not exist" in result.stderr


@requires_mirror
def test_committed_manifest_matches_the_real_mirror() -> None:
    committed = Path(__file__).resolve().parents[1] / "data" / "manifest.csv"
    rows = pd.read_csv(committed)
    assert len(rows) == 400 and rows["class"].value_counts().to_dict() == {"dandelion": 200, "grass": 200}
    assert rows["url"].str.startswith("https://raw.githubusercontent.com/btphan95/greenr-airflow/master/data/").all()
    rebuilt = {(e.relpath, e.sha256, e.size) for e in build_manifest(real_mirror())}
    assert rebuilt == {(f"{r['class']}/{r['file']}", r["sha256"], r["bytes"]) for _, r in rows.iterrows()}
