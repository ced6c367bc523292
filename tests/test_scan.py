"""Validation scan, its cache and its data report, on a folder full of odd and broken files."""

import shutil
from pathlib import Path

import pytest
from PIL import Image

from plantlib.data import DataWarning, scan_dataset
from plantlib.data import scan as scan_module
from plantlib.errors import DataError
from tests.conftest import pattern_image, write_dataset


@pytest.fixture
def messy_dataset(tmp_path: Path) -> Path:
    root = write_dataset(tmp_path / "messy", {"ant": 5, "bee": 5, "cow": 3})
    (root / "ant" / "empty.jpg").write_bytes(b"")
    (root / "ant" / "text.jpg").write_text("not an image")
    (root / "bee" / "half.jpg").write_bytes((root / "bee" / "0000.jpg").read_bytes()[:300])
    (root / "bee" / "notes.txt").write_text("field notes")
    (root / "bee" / ".DS_Store").write_bytes(b"\0\0")
    (root / "cow" / "nested").mkdir()
    pattern_image(77).convert("RGBA").save(root / "cow" / "nested" / "grün bild.png")
    (root / "README.md").write_text("about this data")
    (root / ".hidden-dir").mkdir()
    return root


def test_scan_keeps_good_images_and_lists_every_skipped_file(messy_dataset: Path) -> None:
    with pytest.warns(DataWarning, match=r"skipped 6 of 20 files"):
        result = scan_dataset(messy_dataset, show_progress=False)
    assert result.classes == ["ant", "bee", "cow"]
    assert result.class_counts() == {"ant": 5, "bee": 5, "cow": 4}
    reasons = dict(zip(result.skipped["path"], result.skipped["reason"], strict=True))
    assert reasons["ant/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["ant/text.jpg"].startswith("not an image")
    assert reasons["bee/half.jpg"].startswith("truncated or corrupt")
    assert reasons["bee/notes.txt"] == "not an image file name (.txt)"
    assert reasons["bee/.DS_Store"] == "hidden file"
    assert reasons["README.md"] == "not inside a class folder"
    assert "cow/nested/grün bild.png" in set(result.images["path"])


def test_second_scan_uses_the_cache_and_notices_changed_files(
    messy_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.warns(DataWarning):
        first = scan_dataset(messy_dataset, show_progress=False)
    calls: list[Path] = []
    real_inspect = scan_module._inspect
    monkeypatch.setattr(scan_module, "_inspect", lambda p, *a: calls.append(p) or real_inspect(p, *a))
    with pytest.warns(DataWarning):
        second = scan_dataset(messy_dataset, show_progress=False)
    assert calls == [] and second.cache_hits == 17
    assert second.records.equals(first.records)

    pattern_image(99).save(messy_dataset / "ant" / "0001.jpg")  # content (and size/mtime) changes
    with pytest.warns(DataWarning):
        third = scan_dataset(messy_dataset, show_progress=False)
    assert [p.name for p in calls] == ["0001.jpg"]
    assert (
        third.images.set_index("path").loc["ant/0001.jpg", "sha256"]
        != first.images.set_index("path").loc["ant/0001.jpg", "sha256"]
    )


def test_folder_problems_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist; pass a folder with one sub-folder"):
        scan_dataset(tmp_path / "nowhere")
    single = write_dataset(tmp_path / "single", {"only": 3})
    with pytest.raises(DataError, match=r"needs 2 or more class sub-folders \(found: only\)"):
        scan_dataset(single)


def test_empty_class_is_dropped_with_a_warning_and_one_class_left_is_an_error(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "d", {"a": 3, "b": 3})
    (root / "empty").mkdir()
    with pytest.warns(DataWarning, match="empty in .* hold no usable image"):
        assert scan_dataset(root, show_progress=False).classes == ["a", "b"]
    shutil.rmtree(root / "b")
    (root / "b").mkdir()
    Image.new("RGB", (4, 4)).save(root / "a" / "x.png")
    with pytest.raises(DataError, match="usable images in 1 class"), pytest.warns(DataWarning):
        scan_dataset(root, show_progress=False)
