"""Every file the pipeline writes goes through a temporary file and a rename (plantlib.io / atomic_path)."""

import re
from pathlib import Path

import pytest

from plantlib.io import atomic_write, remove_stale_temporaries, write_json

PACKAGE = Path(__file__).resolve().parents[1] / "plantlib"
WRITE_CALL = re.compile(
    r"\.write_text\(|\.write_bytes\(|\.savefig\(|torch\.save\(|\.to_csv\(|json\.dump\(|shutil\.copy|"
    r"open\([^)]*['\"][wax]b?['\"]"
)
# What a write may target: a handle or temporary path handed out by plantlib.io, or an in-memory buffer.
SAFE_TARGET = re.compile(r"\b(handle|tmp|buffer)\b|to_csv\(index=False\)")
# Files outside the pipeline's outputs: an upload written to its own temporary directory for classification.
EXEMPT = {("widgets.py", "path.write_bytes(bytes(data))")}


def test_no_module_writes_a_file_in_place() -> None:
    offenders = []
    for source in sorted(PACKAGE.rglob("*.py")):
        if source.name == "io.py":
            continue
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            unsafe = WRITE_CALL.search(line) and not SAFE_TARGET.search(line)
            if unsafe and (source.name, line.strip()) not in EXEMPT:
                offenders.append(f"{source.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == [], "write through plantlib.io (atomic_write / atomic_path / write_json):\n" + "\n".join(
        offenders
    )


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "history.json"
    write_json(target, [{"epoch": 1}])

    def crash(handle) -> None:
        handle.write('[{"epoch": 2')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert target.read_text() == '[\n  {\n    "epoch": 1\n  }\n]'
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / ".x.jpg.k3j.tmp").write_bytes(b"partial")
    (tmp_path / "a" / "x.jpg").write_bytes(b"whole")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.jpg"]
