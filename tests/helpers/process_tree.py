"""Who runs under a process, read from /proc (Linux): to check that stopping a command leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

HAS_PROC = Path("/proc/self/stat").is_file()


def _table() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (parent pid, process group, state, start time in ticks) of every running process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text(encoding="ascii").rpartition(")")[2].split()
            except (OSError, UnicodeDecodeError):
                continue
            table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0], fields[19])
    return table


def descendants(pid: int, itself: bool = False) -> dict[int, str]:
    """Every process below `pid` (children, their children, …; with `itself`, `pid` too) -> its start time, which
    tells it from a later process given the same pid."""
    table = _table()
    found: dict[int, str] = {}
    todo = [pid] if itself else [child for child, row in table.items() if row[0] == pid]
    while todo:
        child = todo.pop()
        if child not in found and child in table:
            found[child] = table[child][3]
            todo += [grandchild for grandchild, row in table.items() if row[0] == child]
    return found


def process_group(pid: int) -> int:
    return _table()[pid][1]


def process_groups(processes: dict[int, str]) -> dict[int, int]:
    """pid -> process group of those of `processes` still running, from one read of the table: a short-lived
    helper of a server may end between listing it and asking for its group."""
    table = _table()
    return {pid: table[pid][1] for pid, start in processes.items() if pid in table and table[pid][3] == start}


def survivors(processes: dict[int, str]) -> list[int]:
    """The processes of `descendants()` that still run (a zombie, ended but not yet reaped, does not)."""
    table = _table()
    return [pid for pid, start in processes.items() if pid in table and table[pid][3] == start and table[pid][2] != "Z"]


def group_members(group: int) -> list[int]:
    """Processes of process group `group` that still run."""
    return [pid for pid, row in _table().items() if row[1] == group and row[2] != "Z"]


def kill_all(processes: dict[int, str]) -> None:
    """SIGKILL what of `processes` still runs (a failed test's leftovers), by pid."""
    for pid in survivors(processes):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
