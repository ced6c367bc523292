"""Atomic file writes: a reader, or a crash, never sees a half-written file; a full disk says so in one line.

Text is written with `surrogateescape`: a file name that is not valid UTF-8 reaches Python as a string with
surrogate escapes, and writing it that way gives back the original bytes, so CSVs round-trip such names.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from plantlib.errors import DiskFullError

TEXT_ERRORS = "surrogateescape"  # how text files encode what os.fsdecode made of undecodable bytes
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
# What torch's zip writer raises when a write comes up short (it does not say why).
_SHORT_WRITE_MESSAGES = ("unexpected pos", "failed writing", "file write failed")


@contextmanager
def atomic_path(target: Path, needed_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it is fsynced and renamed over `target`.

    Running out of space raises `DiskFullError` naming the folder and about `needed_bytes` (when given,
    else what was written so far), instead of an errno or torch's "unexpected pos".
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide reports and runs from everyone else
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except (OSError, RuntimeError) as error:
        needed = needed_bytes if needed_bytes is not None else _size(tmp)
        if is_out_of_space(error, target.parent, needed):
            raise disk_full_error(target, needed) from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


def current_umask() -> int:
    """The process's umask: read from /proc where Linux offers it (`os.umask` can only read it by changing it)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def is_out_of_space(error: BaseException, folder: Path, needed_bytes: int) -> bool:
    """ENOSPC / EDQUOT, or torch's short-write error while `folder` has less room than the write needs."""
    if isinstance(error, OSError):
        return error.errno in _NO_SPACE
    if isinstance(error, RuntimeError) and any(text in str(error) for text in _SHORT_WRITE_MESSAGES):
        free = free_bytes(folder)
        return free is not None and free < max(needed_bytes, 1)
    return False


def free_bytes(folder: Path) -> int | None:
    """Bytes still free in `folder`'s file system, or None when it cannot be asked."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full_error(target: Path, needed_bytes: int) -> DiskFullError:
    mb = max(needed_bytes / 2**20, 0.1)
    free = free_bytes(target.parent)
    free_text = "" if free is None else f", {free / 2**20:.0f} MB free"
    return DiskFullError(
        f"no space left on {target.parent} (needs ~{mb:.1f} MB for {target.name}{free_text}); "
        "free some space there and run the command again"
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


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
    text = "b" not in mode
    with (
        atomic_path(target) as tmp,
        open(tmp, mode, encoding="utf-8" if text else None, errors=TEXT_ERRORS if text else None) as handle,
    ):
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
