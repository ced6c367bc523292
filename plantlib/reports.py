"""Run the numbered notebooks headlessly with papermill, export static HTML, and write an index page.

Reports must read well offline: figures are inline PNGs, no widget is needed to see a result, and no script
is fetched from a CDN.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plantlib.errors import ConfigError, PlantlibError
from plantlib.io import write_text
from plantlib.notebook import SUMMARY_ENV, check_parameters, declared_parameters, notebook_paths
from plantlib.paths import notebooks_dir, reports_dir
from plantlib.progress import HEADLESS_ENV

NOTEBOOKS = ("01_explore", "02_train", "03_evaluate", "04_compare_backbones")
PROJECT_KERNEL = "plantlib"
REPORT_DIR_ENV = "PLANTLIB_REPORT_DIR"


@dataclass
class NotebookRun:
    """The outcome of one executed notebook, as the index page shows it."""

    name: str
    status: str  # "ok", "failed" or "not run"
    ipynb: Path | None = None
    html: Path | None = None
    started: str = ""
    seconds: float = 0.0
    summary: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def current_report_dir() -> Path:
    """Where the running report writes (set for its kernels by the runner), else artifacts/reports."""
    return Path(os.environ.get(REPORT_DIR_ENV) or reports_dir())


def kernel_name() -> str:
    """The project's kernel (installed by `make setup`), else the default Python 3 kernel of this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager

    return PROJECT_KERNEL if PROJECT_KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


def plan_parameters(user: dict[str, Any] | None, fast: bool = False) -> dict[str, dict[str, Any]]:
    """Per-notebook parameters from global keys and per-notebook sections; unknown names are errors.

    `user` maps names to values (given to every notebook that declares the name) and may hold a section per
    notebook, e.g. `{"seed": 1, "02_train": {"epochs": 3}}`.
    """
    declared = {name: declared_parameters(name) for name in NOTEBOOKS}
    plan: dict[str, dict[str, Any]] = {name: {} for name in NOTEBOOKS}
    for key, value in (user or {}).items():
        if key in declared:
            if not isinstance(value, dict):
                raise ConfigError(f"parameters for notebook {key} must be a mapping of name: value")
            unknown = sorted(set(value) - set(declared[key]))
            if unknown:
                raise ConfigError(f"unknown parameter(s) {unknown} for {key}; valid: {', '.join(declared[key])}")
            plan[key].update(value)
            continue
        takers = [name for name in NOTEBOOKS if key in declared[name]]
        if not takers:
            valid = sorted({p for params in declared.values() for p in params})
            raise ConfigError(f"unknown parameter {key!r}: no notebook declares it; valid: {', '.join(valid)}")
        for name in takers:
            plan[name].setdefault(key, value)
    if fast:
        for name in NOTEBOOKS:
            if "fast" in declared[name]:
                plan[name]["fast"] = True
    return plan


def check_plan(plan: dict[str, dict[str, Any]]) -> None:
    """Validate every notebook's values as the notebook itself would, so a bad value fails before anything runs."""
    for name, values in plan.items():
        if values:
            check_parameters(name, values)


@contextlib.contextmanager
def _kernel_environment(summary_file: Path) -> Iterator[None]:
    """Environment the kernel inherits: where to write its summary, and that no live frontend is watching."""
    changes = {
        SUMMARY_ENV: str(summary_file),
        REPORT_DIR_ENV: str(summary_file.parent),
        HEADLESS_ENV: "1",
        "PLANTLIB_PROGRESS": "off",
    }
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _stderr_to(log_file: Path) -> Iterator[None]:
    """Send file descriptor 2 to `log_file`: kernel start-up chatter goes to a log, not into reports."""
    sys.stderr.flush()
    saved = os.dup(2)
    target = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(target, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def run_notebook(name: str, output: Path, parameters: dict[str, Any] | None = None) -> NotebookRun:
    """Execute `notebooks/<name>.ipynb` into `output` (+ HTML beside it); a failure is recorded, not raised."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    summary_file = output.with_suffix(".summary.json")
    summary_file.unlink(missing_ok=True)
    run = NotebookRun(name=name, status="ok", ipynb=output, html=output.with_suffix(".html"))
    partial = output.with_name(f".{output.stem}.partial.ipynb")  # papermill saves after every cell
    run.started = time.strftime("%Y-%m-%d %H:%M:%S")
    began = time.perf_counter()
    try:
        with _kernel_environment(summary_file), _stderr_to(output.with_suffix(".kernel.log")):
            papermill.execute_notebook(
                str(notebooks_dir() / f"{name}.ipynb"),
                str(partial),
                parameters=parameters or {},
                kernel_name=kernel_name(),
                cwd=str(notebooks_dir()),
                progress_bar=False,
                log_output=False,
            )
    except PapermillExecutionError as error:
        run.status = "failed"
        run.error = f"cell {error.cell_index} (In [{error.exec_count}]): {error.ename}: {error.evalue}"
    finally:
        if partial.is_file():
            os.replace(partial, output)
    run.seconds = round(time.perf_counter() - began, 1)
    if summary_file.is_file():
        payload = json.loads(summary_file.read_text(encoding="utf-8"))
        run.summary, run.values = payload.get("text", ""), payload.get("values", {})
    if output.is_file():
        export_html(output, run.html)
    return run


_EMPTY_SCRIPT = re.compile(r"<script src=\"\">\s*</script>\s*")


def export_html(ipynb: Path, target: Path) -> None:
    """A self-contained static page: inline figures, no CDN scripts (require.js, MathJax are left out)."""
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.read(str(ipynb), as_version=4)
    exporter = HTMLExporter(
        template_name="lab", require_js_url="", mathjax_url="", exclude_input_prompt=True, exclude_output_prompt=True
    )
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": Path(ipynb).stem}})
    write_text(Path(target), _EMPTY_SCRIPT.sub("", body))


def run_reports(
    parameters: dict[str, Any] | None = None,
    fast: bool = False,
    out_dir: Path | None = None,
    only: list[str] | None = None,
) -> list[NotebookRun]:
    """Run the notebooks in order, export each, write `index.html`; stop at the first failure."""
    out_dir = Path(out_dir or reports_dir())
    plan = plan_parameters(parameters, fast)
    chosen = only or list(NOTEBOOKS)
    unknown = sorted(set(chosen) - set(NOTEBOOKS))
    if unknown:
        raise ConfigError(f"unknown notebook(s) {unknown}; choose from {', '.join(NOTEBOOKS)}")
    check_plan(plan)
    runs: list[NotebookRun] = []
    failed = False
    for name in NOTEBOOKS:
        if name not in chosen:
            continue
        if failed:
            runs.append(NotebookRun(name=name, status="not run", error="an earlier notebook failed"))
            continue
        params = dict(plan[name])
        trained = next((r.values.get("run_dir") for r in runs if r.name == "02_train" and r.status == "ok"), None)
        if name == "03_evaluate" and trained and "run_dir" not in params:
            params["run_dir"] = trained  # evaluate the run this report just trained
        print(f"running {name} …", flush=True)
        run = run_notebook(name, out_dir / f"{name}.ipynb", params)
        print(f"  {run.status} in {run.seconds:.0f}s" + (f": {run.summary}" if run.summary else ""), flush=True)
        runs.append(run)
        failed = run.status == "failed"
    write_index(runs, out_dir)
    return runs


def write_index(runs: list[NotebookRun], out_dir: Path) -> Path:
    """`index.html`: a link to each report, its status, one-line summary, start time and duration."""
    rows = []
    for run in runs:
        link = (
            f'<a href="{html.escape(run.html.name)}">{html.escape(run.name)}</a>'
            if run.html and run.html.is_file()
            else html.escape(run.name)
        )
        has_ipynb = run.ipynb is not None and run.ipynb.is_file()
        notebook_link = f' · <a href="{html.escape(run.ipynb.name)}">ipynb</a>' if has_ipynb else ""
        text = html.escape(run.summary or run.error)
        rows.append(
            f'<tr class="{run.status.replace(" ", "-")}"><td>{link}{notebook_link}</td><td>{run.status}</td>'
            f"<td>{text}</td><td>{run.started}</td><td>{run.seconds:.0f} s</td></tr>"
        )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>plantlib reports</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: .5rem .75rem; border-bottom: 1px solid #ddd; vertical-align: top; }}
tr.failed td {{ background: #fdecea; }} tr.not-run td {{ color: #888; }}
</style></head><body>
<h1>plantlib reports</h1>
<p>Generated {time.strftime("%Y-%m-%d %H:%M:%S")}. Executed notebooks (.ipynb) are kept beside each page.</p>
<table><thead><tr><th>report</th><th>status</th><th>summary</th><th>started</th><th>took</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""
    target = Path(out_dir) / "index.html"
    write_text(target, page)
    write_text(Path(out_dir) / "index.json", json.dumps([asdict(r) for r in runs], indent=2, default=str))
    return target


def check_all_ok(runs: list[NotebookRun]) -> None:
    """Raise naming the failed notebook and cell, so `plantlib report` exits non-zero."""
    for run in runs:
        if run.status == "failed":
            raise PlantlibError(f"notebook {run.name} failed in {run.error}; see {run.html}")


__all__ = [
    "NOTEBOOKS",
    "NotebookRun",
    "check_all_ok",
    "check_plan",
    "notebook_paths",
    "plan_parameters",
    "run_reports",
]
