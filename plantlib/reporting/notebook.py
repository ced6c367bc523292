"""Helpers for the numbered notebooks: validated parameters, summaries for the report index, widgets or not, and
the static HTML a page is read by: the answer box each page opens with, and tables that fit the page.

Notebooks stay thin: they call these and the library, and show results.
"""

from __future__ import annotations

import ast
import contextlib
import html
import json
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plantlib.config import RunConfig, field_names
from plantlib.errors import ConfigError
from plantlib.frontend import KERNEL_DISPLAY_NAME, widget_frontend
from plantlib.io import write_json
from plantlib.paths import notebooks_dir

SUMMARY_ENV = "PLANTLIB_SUMMARY_FILE"
PAPERMILL_HEADER = "# Parameters"
# What papermill may inject for each declared type ('' and None both mean "not set" for text).
_PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str, type(None)),
}
LIST_PARAMETERS = {"backbones": "backbone"}  # comma-separated values of a RunConfig field


def is_interactive() -> bool:
    """True when JupyterLab shows this kernel's widgets; False in every headless run (see plantlib.frontend)."""
    return widget_frontend()


INTERACTIVE_HINT = f"(In JupyterLab with the kernel '{KERNEL_DISPLAY_NAME}', interactive widgets appear here as well.)"


def declared_parameters(notebook: str) -> dict[str, dict[str, Any]]:
    """The names, types, defaults and help texts of a notebook's `parameters` cell."""
    import papermill

    path = notebooks_dir() / f"{notebook}.ipynb"
    if not path.is_file():
        raise ConfigError(f"no notebook {path}; choose one of: {', '.join(p.stem for p in notebook_paths())}")
    return papermill.inspect_notebook(str(path))


def notebook_paths() -> list[Path]:
    return sorted(notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def _injected_names(namespace: dict[str, Any]) -> list[str]:
    """Names papermill injected (its cell starts with '# Parameters'); read from the kernel's input history."""
    names: list[str] = []
    for source in namespace.get("In", []) or []:
        if source.lstrip().startswith(PAPERMILL_HEADER):
            tree = ast.parse(source)
            names += [
                t.id
                for node in tree.body
                if isinstance(node, ast.Assign)
                for t in node.targets
                if isinstance(t, ast.Name)
            ]
    return names


def parameters(namespace: dict[str, Any], notebook: str) -> dict[str, Any]:
    """This notebook's parameter values; an unknown injected name is an error (papermill only warns)."""
    declared = declared_parameters(notebook)
    unknown = [name for name in _injected_names(namespace) if name not in declared]
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for notebook {notebook}; "
            f"valid: {', '.join(declared)}"
        )
    return {name: namespace[name] for name in declared if name in namespace}


def check_parameters(notebook: str, values: dict[str, Any]) -> None:
    """Fail on a value `notebook` would refuse, before it runs: its declared types, then the RunConfig it builds.

    Every parameter that is a RunConfig field is validated together with the notebook's other defaults, and a
    list parameter (`backbones`) item by item, so `epochs=abc`, `epochs=-3` or `backbone=nope` fail at once.
    """
    declared = declared_parameters(notebook)
    for name, value in values.items():
        kind = declared[name]["inferred_type_name"] if name in declared else None
        allowed = _PARAMETER_TYPES.get(kind or "")
        if allowed and (not isinstance(value, allowed) or (isinstance(value, bool) and kind != "bool")):
            raise ConfigError(
                f"{notebook}: parameter {name}={value!r} has type {type(value).__name__}; expected {kind} "
                f"({declared[name]['help']})"
            )
    merged = {**_defaults(declared), **values}
    try:
        run_config(merged)
        for name, field in LIST_PARAMETERS.items():
            for item in str(merged.get(name) or "").split(","):
                if item.strip():
                    run_config(merged, **{field: item.strip()})
    except ConfigError as error:
        raise ConfigError(f"{notebook}: {error}") from error


def _defaults(declared: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The default values written in a parameters cell (papermill gives their source text)."""
    defaults = {}
    for name, spec in declared.items():
        with contextlib.suppress(ValueError, SyntaxError):
            defaults[name] = ast.literal_eval(spec["default"])
    return defaults


def run_config(params: dict[str, Any], **overrides: Any) -> RunConfig:
    """Map notebook parameters onto the validated run configuration ('' stands for None)."""
    values = {k: (None if v == "" else v) for k, v in params.items() if k in field_names()}
    values.update(overrides)
    return RunConfig.from_dict(values)


def summary(text: str, show: bool = True, **values: Any) -> None:
    """Hand a one-line result (with `values`) to the report index when run by `plantlib report`; `show` also
    prints it here (not needed on a page whose `answer_box` already shows the answer)."""
    from IPython.display import Markdown, display

    if show:
        display(Markdown(f"**Summary:** {text}"))
    target = os.environ.get(SUMMARY_ENV)
    if target:
        write_json(Path(target), {"text": text, "values": json.loads(json.dumps(values, default=str))})


def show(figure: Any) -> None:
    """Display a figure once and release it (a bare figure would be shown twice in a notebook)."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    display(figure)
    plt.close(figure)


# -- static HTML: the answer box and tables ------------------------------------------------------------------
# Inline styles only: no script, widget or stylesheet, so a box reads the same in JupyterLab (whose sanitiser
# keeps these properties) and in nbconvert's static page. The classes let tests and readers find them.
BOX_CLASS = "plantlib-summary"
TABLE_CLASS = "plantlib-table"
MISSING = "–"  # what a table shows for a value that does not exist; `table` says why in a footnote
_BOX_STYLE = (
    "border: 2px solid #2e7d4f; border-radius: 6px; padding: 0.5em 1em; margin: 0.25em 0 1em 0; "
    "background-color: #f2f8f4; color: #1a1a1a; max-width: 60em"
)
_NOTE_STYLE = "font-size: 0.9em; color: #444444; margin: 0.25em 0"


def summary_box(
    title: str,
    body: str | Sequence[str] | Mapping[str, Any] | Any,
    verdict: str | None = None,
    notes: Sequence[str] = (),
) -> Any:
    """The answer a page opens with: a bordered box holding `title`, the key numbers and the `verdict` sentence.

    `body` is a line, a list of lines, a mapping (shown as a two-column table: what, value) or a DataFrame
    (shown by `table`); `notes` are small print under it (caveats, what a number does not say). Returns an
    IPython HTML object: the last expression of a cell, or `display(...)`.
    """
    from IPython.display import HTML

    parts = [f'<div class="{BOX_CLASS}" style="{_BOX_STYLE}">']
    parts.append(f'<p style="font-size: 1.15em; font-weight: bold; margin: 0.25em 0">{html.escape(title)}</p>')
    parts.append(_box_body(body))
    if verdict:
        parts.append(f'<p style="font-weight: bold; margin: 0.5em 0 0.25em 0">{html.escape(verdict)}</p>')
    parts += [f'<p style="{_NOTE_STYLE}">{html.escape(note)}</p>' for note in notes]
    parts.append("</div>")
    return HTML("\n".join(parts))


PENDING = "It appears here once the cells below have run; if it stays like this, one of them failed."


class AnswerBox:
    """A page's answer at the top of the page: the box is shown where it is made (the cell after the parameters)
    and filled in by `show` once a later cell has computed the answer. It is a display update, so JupyterLab,
    papermill and nbconvert's HTML all show the filled box in that first place, before logs, tables and figures."""

    def __init__(self) -> None:
        from IPython.display import DisplayHandle

        self._handle = DisplayHandle()
        self._handle.display(summary_box("The answer", PENDING))

    def show(
        self,
        title: str,
        body: str | Sequence[str] | Mapping[str, Any] | Any,
        verdict: str | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        """Fill the box in: the arguments are `summary_box`'s."""
        self._handle.update(summary_box(title, body, verdict, notes))


def answer_box() -> AnswerBox:
    """Show this page's answer box (still empty) here; its `show` fills it in later."""
    return AnswerBox()


def _box_body(body: Any) -> str:
    if isinstance(body, str):
        return f'<p style="margin: 0.25em 0">{html.escape(body)}</p>'
    if isinstance(body, Mapping):
        rows = "".join(
            f'<tr><th style="text-align: left">{html.escape(str(key))}</th>'
            f'<td style="text-align: left">{html.escape(format_value(value))}</td></tr>'
            for key, value in body.items()
        )
        return f'<table class="{TABLE_CLASS}" style="margin: 0.25em 0">{rows}</table>'
    if hasattr(body, "to_html"):
        return table(body).data
    items = "".join(f"<li>{html.escape(str(line))}</li>" for line in body)
    return f'<ul style="margin: 0.25em 0; padding-left: 1.5em">{items}</ul>'


def is_missing(value: Any) -> bool:
    """None, NaN and pandas' missing markers (NA, NaT): a value that does not exist."""
    import pandas as pd

    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def format_value(value: Any, digits: int = 3) -> str:
    """A cell's text: `digits` significant figures, small numbers in scientific notation (4.2e-06, never 0.0000),
    numbers of 1 or more without an exponent (52.7, 110), whole numbers and text as they are, `MISSING` for none."""
    if is_missing(value):
        return MISSING
    if isinstance(value, (bool, numbers.Integral)) or not isinstance(value, numbers.Real) or math.isinf(value):
        return str(value)
    value = float(value)
    magnitude = abs(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 1:
        decimals = max(digits - 1 - math.floor(math.log10(magnitude)), 0)
        text = f"{value:.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text  # as "g" does below: 1.5, not 1.50
    return f"{value:.{digits}g}"


def table(
    frame: Any,
    caption: str | None = None,
    notes: Sequence[str] = (),
    missing: str = "no value",
    digits: int = 3,
    index: bool | None = None,
) -> Any:
    """A DataFrame as a static table that fits the page: numbers by `format_value`, column names that wrap
    (underscores read as spaces), `caption` above, `notes` below. A missing value shows as `MISSING` and a
    footnote says why (`missing`), so no cell ever reads 'nan'. The index is shown when it is more than row numbers
    (or as `index` says). Returns an IPython HTML object."""
    import pandas as pd
    from IPython.display import HTML

    if index is None:
        index = not isinstance(frame.index, pd.RangeIndex)
    shown = frame.copy()
    shown.columns = [str(column).replace("_", " ") for column in shown.columns]
    has_missing = bool(frame.map(is_missing).to_numpy().any()) if len(frame) else False
    cells = shown.astype(object).map(lambda value: format_value(value, digits))
    body = cells.to_html(index=index, border=0, classes=TABLE_CLASS, escape=True)
    lines = [f'<p style="font-weight: bold; margin: 0.5em 0 0.25em 0">{html.escape(caption)}</p>'] if caption else []
    lines.append(body)
    footnotes = [*notes, *([f"{MISSING}: {missing}"] if has_missing else [])]
    lines += [f'<p style="{_NOTE_STYLE}">{html.escape(note)}</p>' for note in footnotes]
    return HTML("<div>" + "\n".join(lines) + "</div>")


def wall_time_note(what: str) -> str:
    """Footnote for a column of wall-clock times: they measure this machine under whatever else ran, not the model."""
    cores = os.cpu_count() or 1
    load = f", load average {os.getloadavg()[0]:.1f} as this ran" if hasattr(os, "getloadavg") else ""
    return (
        f"{what}: wall-clock time on this machine ({cores} CPU cores{load}), so it moves with whatever else was "
        "running: compare such times within one report at most."
    )
