"""Helpers for the numbered notebooks: validated parameters, summaries for the report index, widgets or not.

Notebooks stay thin: they call these and the library, and show results.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
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


def summary(text: str, **values: Any) -> None:
    """Show a one-line result and hand it (with `values`) to the report index when run by `plantlib report`."""
    from IPython.display import Markdown, display

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
