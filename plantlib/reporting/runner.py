"""Run the numbered notebooks headlessly with papermill, export static HTML, and keep the index page current.

Reports must read well offline: figures are inline PNGs, no widget is needed to see a result, and no script
is fetched from a CDN. Every invocation runs in its own folder (see `plantlib.reporting.index`): notebooks hand
results to the next one only through that folder's summaries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plantlib.children import stop_signals_raise
from plantlib.errors import ConfigError, PlantlibError
from plantlib.frontend import KERNEL_NAME, kernel_runs_this_interpreter
from plantlib.io import write_text
from plantlib.paths import notebooks_dir, reports_dir
from plantlib.reporting.index import Invocation, NotebookRun, start_invocation
from plantlib.reporting.notebook import SUMMARY_ENV, check_parameters, declared_parameters, notebook_paths

NOTEBOOKS = ("01_explore", "02_train", "03_evaluate", "04_compare_backbones", "05_tune", "06_audit")
KERNEL_START_ATTEMPTS = 3  # a kernel that dies before its first reply is started again


def kernel_name() -> str:
    """The project's kernel (`make setup` installs it) when it runs this interpreter, else the default Python 3.

    A `plantlib` kernel registered for the user by another checkout or environment is never used here.
    """
    return KERNEL_NAME if kernel_runs_this_interpreter() else "python3"


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
    """Environment the kernel inherits: where to write its summary.

    Nothing else differs from a plain `papermill` run, so both give the same report.
    """
    changes = {SUMMARY_ENV: str(summary_file)}
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
    target = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(target, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(target)


def code_cell_count(name: str, parameters: dict[str, Any] | None) -> int:
    """Code cells papermill will run: the notebook's, plus the cell it injects when given parameters."""
    import nbformat

    notebook = nbformat.read(str(notebooks_dir() / f"{name}.ipynb"), as_version=4)
    return sum(cell.cell_type == "code" for cell in notebook.cells) + bool(parameters)


def run_notebook(
    name: str,
    output: Path,
    parameters: dict[str, Any] | None = None,
    echo: bool = False,
    no_input: bool = False,
) -> NotebookRun:
    """Execute `notebooks/<name>.ipynb` into `output` (+ HTML beside it); a failure is recorded, not raised.

    `echo` prints each code cell as it starts and every line the notebook prints; `no_input` leaves the code
    cells out of the HTML page.
    """
    from papermill.exceptions import PapermillExecutionError

    from plantlib.reporting.console import NotebookConsole

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    summary_file = output.with_suffix(".summary.json")
    summary_file.unlink(missing_ok=True)
    run = NotebookRun(name=name, status="ok", ipynb=output, html=output.with_suffix(".html"))
    partial = output.with_name(f".{output.stem}.partial.ipynb")  # papermill saves after every cell
    run.started = time.strftime("%Y-%m-%d %H:%M:%S")
    began = time.perf_counter()
    console = NotebookConsole(name, code_cell_count(name, parameters)) if echo else None
    echoing = {"stdout_file": console, "cell_started": console.cell_started} if console else {}
    try:
        with _kernel_environment(summary_file), _stderr_to(output.with_suffix(".kernel.log")):
            _execute(name, partial, parameters, echoing)
    except PapermillExecutionError as error:
        run.status = "interrupted" if error.ename == "KeyboardInterrupt" else "failed"
        run.error = f"cell {error.cell_index} (In [{error.exec_count}]): {error.ename}: {error.evalue}"
    finally:
        if partial.is_file():
            os.replace(partial, output)
    run.seconds = round(time.perf_counter() - began, 1)
    if summary_file.is_file():
        payload = json.loads(summary_file.read_text(encoding="utf-8"))
        run.summary, run.values = payload.get("text", ""), payload.get("values", {})
    if output.is_file():
        export_html(output, run.html, no_input=no_input)
    return run


def _execute(name: str, output: Path, parameters: dict[str, Any] | None, echoing: dict[str, Any]) -> None:
    """papermill runs `notebooks/<name>.ipynb` into `output`; a kernel that dies before its first reply is
    started again (up to KERNEL_START_ATTEMPTS times)."""
    import papermill

    from plantlib.reporting.console import ENGINE_NAME

    for attempt in range(1, KERNEL_START_ATTEMPTS + 1):
        try:
            papermill.execute_notebook(
                str(notebooks_dir() / f"{name}.ipynb"),
                str(output),
                parameters=parameters or {},
                kernel_name=kernel_name(),
                cwd=str(notebooks_dir()),
                progress_bar=False,
                log_output=False,
                engine_name=ENGINE_NAME,
                **echoing,
            )
            return
        except RuntimeError as error:
            # Kernels started at the same moment by two reports can pick the same free ports; the loser dies
            # before it runs a cell, so starting it again is safe.
            if "Kernel died before replying" not in str(error) or attempt == KERNEL_START_ATTEMPTS:
                raise
            time.sleep(random.uniform(0.5, 2.0))


_EMPTY_SCRIPT = re.compile(r"<script src=\"\">\s*</script>\s*")


def export_html(ipynb: Path, target: Path, no_input: bool = False) -> None:
    """A self-contained static page: inline figures, no CDN scripts (require.js, MathJax are left out)."""
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.read(str(ipynb), as_version=4)
    exporter = HTMLExporter(
        template_name="lab",
        require_js_url="",
        mathjax_url="",
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        exclude_input=no_input,
    )
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": Path(ipynb).stem}})
    write_text(Path(target), _EMPTY_SCRIPT.sub("", body))


def run_reports(
    parameters: dict[str, Any] | None = None,
    fast: bool = False,
    out_dir: Path | None = None,
    only: list[str] | None = None,
    echo: bool = True,
    no_input: bool = False,
) -> list[NotebookRun]:
    """Run the notebooks in order in a new report folder under `out_dir`; stop at the first failure.

    Every parameter is validated before the first notebook starts. The index is rewritten as each notebook
    starts and ends; a report that runs to its end is published (its pages copied beside `index.html`), an
    interrupted one is only listed as interrupted. `echo` streams each notebook's cells and printed lines to the
    terminal and ends with a table of statuses and durations; `no_input` leaves code out of the HTML pages.
    """
    root = Path(out_dir or reports_dir())
    unknown = sorted(set(only or []) - set(NOTEBOOKS))
    if unknown:
        raise ConfigError(f"unknown notebook(s) {unknown}; choose from {', '.join(NOTEBOOKS)}")
    plan = plan_parameters(parameters, fast)
    check_plan(plan)
    chosen = [name for name in NOTEBOOKS if name in (only or NOTEBOOKS)]
    invocation = start_invocation(root, chosen, parameters or {})
    print(f"report folder: {invocation.folder}", flush=True)
    try:
        with stop_signals_raise():  # SIGTERM, SIGHUP: leave through papermill's cleanup, which ends the kernel
            _run_in_order(invocation, plan, echo, no_input)
    except BaseException:
        invocation.interrupted()
        drop_dead_kernel_task_logs()
        raise
    invocation.completed()
    if echo:
        from plantlib.reporting.console import summary_table

        rows = [
            (run.name, run.status, run.seconds if run.status != "not run" else None, run.summary or run.error or "")
            for run in invocation.notebooks
        ]
        print("\n" + summary_table(rows), flush=True)
    return invocation.notebooks


def _dead_kernel_task(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return type(error).__name__ == "DeadKernelError"


def drop_dead_kernel_task_logs() -> None:
    """A report stopped mid-cell leaves papermill's cell task waiting on the kernel that its cleanup then ends; the
    task fails with DeadKernelError, and asyncio logs that traceback ("Task exception was never retrieved") when
    the task is collected, after the one-line stop message. The kernel was ended on purpose: drop that record."""
    logging.getLogger("asyncio").addFilter(lambda record: not _dead_kernel_task(record))


def _run_in_order(invocation: Invocation, plan: dict[str, dict[str, Any]], echo: bool, no_input: bool) -> None:
    runs = invocation.notebooks
    for index, name in enumerate(run.name for run in list(runs)):
        if any(run.status == "failed" for run in runs[:index]):
            runs[index] = NotebookRun(name=name, status="not run", error="an earlier notebook failed")
            continue
        params = dict(plan[name])
        trained = next((r.values.get("run_dir") for r in runs if r.name == "02_train" and r.status == "ok"), None)
        if name == "03_evaluate" and trained and "run_dir" not in params:
            params["run_dir"] = trained  # evaluate the run this report just trained, never another report's
        output = invocation.folder / f"{name}.ipynb"
        runs[index] = NotebookRun(name=name, status="running", ipynb=output, started=time.strftime("%Y-%m-%d %H:%M:%S"))
        invocation.save()
        print(f"[{index + 1}/{len(runs)}] {name}", flush=True)
        runs[index] = run = run_notebook(name, output, params, echo=echo, no_input=no_input)
        print(f"  {run.status} in {run.seconds:.0f}s" + (f": {run.summary}" if run.summary else ""), flush=True)
        invocation.save()
        if run.status == "interrupted":  # Ctrl-C reached the kernel first
            raise KeyboardInterrupt


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
