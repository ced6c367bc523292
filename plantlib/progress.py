"""Progress bars that read well in a terminal, in JupyterLab and in a headless papermill run."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm as text_tqdm

T = TypeVar("T")

HEADLESS_ENV = "PLANTLIB_HEADLESS"  # set by the report runner for the kernels it starts

# A headless run (papermill, CI, a log file) gets a bar redrawn at most this often, so logs stay short.
HEADLESS_MIN_INTERVAL_S = 10.0


def live_notebook_frontend() -> bool:
    """True in an interactive Jupyter kernel, False under papermill or in a plain terminal."""
    if os.environ.get("PLANTLIB_PROGRESS") in {"text", "off"} or os.environ.get(HEADLESS_ENV):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> Any:
    """A tqdm bar: a widget in a live notebook, otherwise text that is redrawn sparingly when not a TTY."""
    if os.environ.get("PLANTLIB_PROGRESS") == "off":
        kwargs["disable"] = True
    if live_notebook_frontend():
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(iterable, **kwargs)
    if not sys.stderr.isatty():
        kwargs.setdefault("mininterval", HEADLESS_MIN_INTERVAL_S)
        kwargs.setdefault("ascii", True)
    kwargs.setdefault("dynamic_ncols", True)
    return text_tqdm(iterable, file=sys.stderr, **kwargs)
