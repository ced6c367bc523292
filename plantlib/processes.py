"""Which process wrote a record (run.json, a report's report.json), and whether it still runs.

A record that says "running" outlives a process killed with -9; its readers ask `process_is_alive`. A pid alone
is not enough, since the system reuses it once its process has ended: the process's start time goes with it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first, then parent pid, process group, …;
    start time at index 19), or None where the process is gone or there is no /proc (Linux only)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rpartition(")")[2].split()
    except (OSError, UnicodeDecodeError):
        return None


def process_start(pid: int) -> str | None:
    """An opaque start time of process `pid` (None when it is gone or cannot be read): with the pid it names one
    process, since a pid is reused once its process has ended. A zombie (ended, not yet reaped) counts as gone."""
    if Path("/proc/self/stat").is_file():  # Linux: the kernel's start time in clock ticks since boot
        fields = stat_fields(pid)
        if fields is None:
            return None
        return None if len(fields) < 20 or fields[0] == "Z" else f"ticks:{fields[19]}"  # state, starttime
    try:
        import psutil
    except ImportError:
        return None
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else f"created:{process.create_time():.3f}"
    except psutil.Error:
        return None


def this_process() -> dict[str, Any]:
    """Who is writing: pid, host and start time, for `process_is_alive` to check later."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": process_start(pid)}


def process_is_alive(process: dict[str, Any] | None) -> bool:
    """Whether the process `this_process()` described is still running. Assumed so when that cannot be told:
    no record (an older run.json), another machine, or no way to read start times here."""
    if not isinstance(process, dict) or process.get("host") != socket.gethostname():
        return True
    pid = process.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        pass  # it exists (owned by another user)
    started = process.get("started")
    if not isinstance(started, str):
        return True
    now = process_start(pid)
    if now is not None and now.partition(":")[0] != started.partition(":")[0]:
        return True  # recorded another way than this machine reads it now: cannot compare
    return now == started
