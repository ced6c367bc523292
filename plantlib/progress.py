"""Progress bars that read well in a terminal, in JupyterLab, in a log file and in a headless notebook's output."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any, TypeVar

from tqdm import tqdm as text_tqdm

from plantlib.frontend import in_jupyter_kernel, widget_frontend

T = TypeVar("T")

# Where no terminal redraws the bar (papermill, a log file, CI), a line is written at most this often.
LINE_MIN_INTERVAL_S = 10.0


class WholeLines:
    """A stream that drops tqdm's bare carriage returns and newlines, so only whole progress lines reach it."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if text.strip("\r\n "):
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class LineProgress(text_tqdm):  # type: ignore[misc]
    """tqdm for output nobody redraws: one line per refresh, no "0/N" line before any work, no "\\r" clutter."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        text = self.__str__() if msg is None else msg
        if self.n and text.strip():
            self.fp.write(text.rstrip() + "\n")
            self.fp.flush()
        return True


def live_notebook_frontend() -> bool:
    """True when a widget frontend (JupyterLab) shows this kernel's output, unless PLANTLIB_PROGRESS says text."""
    return os.environ.get("PLANTLIB_PROGRESS") not in {"text", "off"} and widget_frontend()


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> Any:
    """A tqdm bar: a widget in JupyterLab, a redrawn bar in a terminal, whole lines anywhere else."""
    if os.environ.get("PLANTLIB_PROGRESS") == "off":
        kwargs["disable"] = True
    if live_notebook_frontend():
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(iterable, **kwargs)
    if in_jupyter_kernel() or not sys.stderr.isatty():
        kwargs.setdefault("mininterval", LINE_MIN_INTERVAL_S)
        kwargs.setdefault("ascii", True)
        kwargs.setdefault("ncols", 100)
        # In a notebook's saved output stderr reads as an error; elsewhere stdout may be data (predict's CSV).
        stream = sys.stdout if in_jupyter_kernel() else sys.stderr
        return LineProgress(iterable, file=WholeLines(stream), **kwargs)
    kwargs.setdefault("dynamic_ncols", True)
    return text_tqdm(iterable, file=sys.stderr, **kwargs)
