"""Long-lived child processes (the MLflow UI server, torchrun): each in its own process group, ended with ours.

A child in a process group of its own is out of reach of the terminal's Ctrl-C and of a signal a process manager
sends to this process alone, so ending it is this module's job. `owned_process_group` starts one and, however its
block is left, ends the child's whole group: SIGTERM (SIGINT when the block was interrupted, as a terminal would
have sent it), then SIGKILL after a grace period, also to descendants that moved to a group of their own.

`stop_signals_raise` makes the block's `finally` run at all: SIGTERM and SIGHUP raise `Stopped` (exit status 143
and 129), SIGINT raises KeyboardInterrupt (130 from the CLI). Report kernels use it alone: their kernel manager
already starts each kernel in its own group and ends that group when the notebook's run is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from plantlib.processes import process_start, stat_fields

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP", "SIGINT") if hasattr(signal, name))
GRACE_S = 5.0  # from SIGTERM to SIGKILL


class Stopped(SystemExit):
    """This process was asked to stop by signal `signum`; it exits with the conventional status 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While inside: SIGTERM and SIGHUP raise `Stopped`, SIGINT raises KeyboardInterrupt, so `finally` blocks run.

    Only the first signal raises; later ones are ignored until the block is left, so that they cannot cut the
    cleanup short (it is bounded: SIGKILL follows a few seconds after SIGTERM). A signal whose handler is not the
    default (ignored under nohup, or set by a Jupyter kernel or an enclosing block) is left alone, and nothing
    changes outside the main thread, where Python cannot set handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def raise_once(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if raised:
            return
        raised = True
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Stopped(signum)

    previous = {}
    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is signal.SIG_DFL or handler is signal.default_int_handler:
            previous[signum] = signal.signal(signum, raise_once)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def owned_process_group(
    command: Sequence[str], grace_s: float = GRACE_S, **popen_kwargs: Any
) -> Iterator[subprocess.Popen]:
    """Start `command` in a process group of its own; on leaving the block, end that group (`end_process_group`).

    The stop signals raise while inside (`stop_signals_raise`), so a SIGTERM to this process ends the child too.
    """
    with stop_signals_raise():
        process = subprocess.Popen(command, start_new_session=True, **popen_kwargs)
        first_signal = signal.SIGTERM
        try:
            yield process
        except KeyboardInterrupt:
            first_signal = signal.SIGINT
            raise
        finally:
            end_process_group(process, grace_s, first_signal)
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


_KILLED_EXIT_S = 5.0


def end_process_group(process: subprocess.Popen, grace_s: float = GRACE_S, first_signal: int = signal.SIGTERM) -> None:
    """End `process`, the leader of its own group, with its group and all its descendants, and reap it.

    The group gets `first_signal`, then SIGKILL if anything is left after `grace_s` seconds. Descendants that
    started groups of their own (torchrun's workers do) are noted first and get the SIGKILL too.
    """
    group = process.pid
    strays = {pid: start for pid, start in _descendants(process.pid).items() if _group_of(pid) != group}
    _signal_group(group, first_signal)
    deadline = time.monotonic() + grace_s
    while _alive(process, group, strays):
        if time.monotonic() > deadline:
            _signal_group(group, signal.SIGKILL)
            for pid, start in strays.items():
                if start is not None and process_start(pid) == start:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait()
    settled = time.monotonic() + _KILLED_EXIT_S  # a killed process takes a moment to leave the process table
    while _alive(process, group, strays) and time.monotonic() < settled:
        time.sleep(0.05)


def group_members(group: int) -> list[int]:
    """Processes of process group `group` that still run (zombies excluded; Linux), else [group] while it exists."""
    if not Path("/proc/self/stat").is_file():
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [group]
    return [pid for pid, (_, pgrp, state) in _process_table().items() if pgrp == group and state != "Z"]


def _alive(process: subprocess.Popen, group: int, strays: dict[int, str | None]) -> bool:
    process.poll()  # reaps the leader once it has ended
    if group_members(group):
        return True
    return any(start is not None and process_start(pid) == start for pid, start in strays.items())


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def _group_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _descendants(pid: int) -> dict[int, str | None]:
    """Every descendant of `pid` with its start time (Linux /proc; none where it cannot be read)."""
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in _process_table().items():
        children.setdefault(parent, []).append(child)
    found: dict[int, str | None] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if child not in found:
            found[child] = process_start(child)
            todo.extend(children.get(child, []))
    return found


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, state) of every process this user can see, from /proc."""
    table: dict[int, tuple[int, int, str]] = {}
    if not Path("/proc/self/stat").is_file():
        return table
    for entry in Path("/proc").iterdir():
        fields = stat_fields(entry.name) if entry.name.isdigit() else None
        if fields is None:
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return table
