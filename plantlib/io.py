"""Atomic file writes: a reader, or a crash, never sees a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is fsynced and renamed over `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path) -> int:
    """Delete temporary files an interrupted `atomic_path` left behind (a killed process cannot clean up)."""
    removed = 0
    for stale in Path(folder).rglob(".*.tmp"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write(target: Path, write: Callable[[IO[Any]], None], mode: str = "w") -> None:
    """Call `write(handle)` on a temporary file and move it into place only when it returned."""
    with atomic_path(target) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as handle:
        write(handle)


def write_json(target: Path, payload: Any) -> None:
    atomic_write(target, lambda handle: json.dump(payload, handle, indent=2, sort_keys=False, default=str))


def write_text(target: Path, text: str) -> None:
    atomic_write(target, lambda handle: handle.write(text))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or {} when the file is missing or unreadable (a run that never wrote it)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
