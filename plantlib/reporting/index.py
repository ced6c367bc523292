"""The reports folder: one folder per `plantlib report` invocation, the published latest report, the index page.

Each invocation writes only into its own folder (`<YYYYmmdd-HHMMSS>-<id>/`: notebooks, pages, summaries and
`report.json`), so reports started together never read each other's notebooks. A report that runs to its end
(ok, or stopped by a failing notebook) is published: its pages are copied to the top of the reports folder,
replacing the previous report's as a whole; an interrupted one never touches them. `index.html` lists every
invocation, newest first, with each notebook's status, and links the published pages.
"""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plantlib.errors import PlantlibError
from plantlib.io import atomic_path, write_json, write_text
from plantlib.processes import process_is_alive, process_start

RECORD_FILE = "report.json"  # in each invocation's folder: its status and its notebooks'
REPORTS_FILE = "reports.json"  # beside index.html: every invocation, newest first, and which one is published
LATEST_FILE = "index.json"  # beside index.html: the published report's notebooks (paths to the copies)
LOCK_FILE = ".reports.lock"
COMPARE_DIR = "compare"


@dataclass
class NotebookRun:
    """The outcome of one notebook, as the index page shows it."""

    name: str
    status: str  # "ok", "failed", "interrupted", "not run"; while a report runs also "waiting", "running"
    ipynb: Path | None = None
    html: Path | None = None
    started: str = ""
    seconds: float = 0.0
    summary: str = ""
    values: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class Invocation:
    """One `plantlib report` run: its own folder, its notebooks in order, where it stands."""

    folder: Path
    notebooks: list[NotebookRun]
    parameters: dict[str, Any]
    status: str = "running"  # then "ok", "failed" or "interrupted"
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    finished: str = ""
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    pid_started: str | None = field(default_factory=lambda: process_start(os.getpid()))  # tells a reused pid

    @property
    def root(self) -> Path:
        return self.folder.parent

    def save(self) -> None:
        """Rewrite `report.json` and the index, so both always say where this report stands."""
        write_json(self.folder / RECORD_FILE, {**asdict(self), "id": self.folder.name})
        write_index(self.root)

    def interrupted(self) -> None:
        """Mark the running notebook interrupted and the rest not run; the published report stays as it was."""
        for run in self.notebooks:
            if run.status == "running":
                run.status, run.error = "interrupted", "the report was interrupted while this notebook ran"
                run.html = run.html if run.html and run.html.is_file() else None
            elif run.status == "waiting":
                run.status, run.error = "not run", "the report was interrupted before this notebook"
        self._end("interrupted")

    def completed(self) -> None:
        """Record the outcome and publish this report's pages as the latest."""
        self._end("failed" if any(run.status == "failed" for run in self.notebooks) else "ok")
        publish(self)

    def _end(self, status: str) -> None:
        self.status, self.finished = status, time.strftime("%Y-%m-%d %H:%M:%S")
        self.save()


def start_invocation(root: Path, names: list[str], parameters: dict[str, Any]) -> Invocation:
    """A new, exclusively created folder `<root>/<YYYYmmdd-HHMMSS>-<random>` and its record (notebooks waiting)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        folder = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        try:
            folder.mkdir()
            break
        except FileExistsError:
            continue
    else:
        raise PlantlibError(f"could not create a new report folder under {root}; check that it is writable")
    notebooks = [NotebookRun(name=name, status="waiting") for name in names]
    given = json.loads(json.dumps(parameters, default=str))
    invocation = Invocation(folder=folder, notebooks=notebooks, parameters=given)
    invocation.save()
    return invocation


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One writer of the shared files (published pages, index) at a time, across processes."""
    with open(root / LOCK_FILE, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def publish(invocation: Invocation) -> None:
    """Copy the report's pages to the top of the reports folder, replacing every page of the previous one."""
    root, folder = invocation.root, invocation.folder
    with _locked(root):
        published = []
        names = {run.name for run in invocation.notebooks}
        for run in invocation.notebooks:
            copy = NotebookRun(**{**asdict(run), "ipynb": None, "html": None})
            for kind in ("ipynb", "html"):
                source = folder / f"{run.name}.{kind}"
                if source.is_file():
                    _copy(source, root / source.name)
                    setattr(copy, kind, root / source.name)
                else:
                    (root / source.name).unlink(missing_ok=True)
            published.append(copy)
        for stale in root.glob("[0-9][0-9]_*.*"):
            if stale.suffix in (".html", ".ipynb") and stale.stem not in names:
                stale.unlink()
        _replace_compare(folder / COMPARE_DIR, root / COMPARE_DIR)
        write_json(root / LATEST_FILE, [asdict(run) for run in published])
        _write_index_files(root, latest=folder.name)


def _replace_compare(source: Path, target: Path) -> None:
    """The published `compare/` pages become the report's own (none when it has none)."""
    keep = {p.name for p in source.iterdir() if p.is_file()} if source.is_dir() else set()
    for name in sorted(keep):
        _copy(source / name, target / name)
    if target.is_dir():
        for stale in target.iterdir():
            if stale.is_file() and stale.name not in keep:
                stale.unlink()
        with contextlib.suppress(OSError):
            target.rmdir()  # only when it is now empty


def write_index(root: Path) -> Path:
    """`index.html` and `reports.json` from the invocation folders as they are on disk now."""
    with _locked(root):
        return _write_index_files(root, latest=_published_id(root))


def _published_id(root: Path) -> str | None:
    try:
        return json.loads((root / REPORTS_FILE).read_text(encoding="utf-8")).get("published")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def read_invocations(root: Path) -> list[dict[str, Any]]:
    """Every invocation's record, newest first; a "running" one whose process is gone reads as interrupted."""
    records = []
    for record_file in Path(root).glob(f"*/{RECORD_FILE}"):
        try:
            record = json.loads(record_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(record, dict) or not {"id", "status", "notebooks"} <= set(record):
            continue  # not a report record (or one from another tool): leave it out of the index
        if record.get("status") == "running" and not _still_running(record):
            record["status"] = "interrupted"
            for run in record.get("notebooks", []):
                if run["status"] == "running":
                    run["status"], run["error"] = "interrupted", "the report's process ended while this notebook ran"
                elif run["status"] == "waiting":
                    run["status"] = "not run"
        records.append(record)
    return sorted(records, key=lambda r: (r.get("started", ""), r.get("id", "")), reverse=True)


def _still_running(record: dict[str, Any]) -> bool:
    """Whether the process that wrote `record` is alive (assumed so when it ran on another machine)."""
    owner = {"pid": record.get("pid"), "host": record.get("host"), "started": record.get("pid_started")}
    return process_is_alive(owner)


def _write_index_files(root: Path, latest: str | None) -> Path:
    records = read_invocations(root)
    write_json(root / REPORTS_FILE, {"published": latest, "reports": records})
    target = root / "index.html"
    write_text(target, _index_page(root, records, latest))
    return target


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
table { border-collapse: collapse; width: 100%; margin-bottom: 1.5rem; }
th, td { text-align: left; padding: .4rem .7rem; border-bottom: 1px solid #ddd; vertical-align: top; }
tr.failed td, tr.interrupted td { background: #fdecea; } tr.not-run td, tr.waiting td { color: #888; }
tr.running td { background: #fff8e1; } h2 { font-size: 1.1rem; margin-top: 2rem; } code { font-size: .9em; }
"""


def _row(run: dict[str, Any], href_prefix: str, root: Path) -> str:
    name, status = run["name"], run["status"]
    page, notebook = f"{href_prefix}{name}.html", f"{href_prefix}{name}.ipynb"
    link = f'<a href="{html.escape(page)}">{html.escape(name)}</a>' if (root / page).is_file() else html.escape(name)
    if (root / notebook).is_file():
        link += f' · <a href="{html.escape(notebook)}">ipynb</a>'
    text = html.escape(run.get("summary") or run.get("error") or "")
    took = f"{run.get('seconds', 0):.0f} s" if status in ("ok", "failed") else ""
    return (
        f'<tr class="{status.replace(" ", "-")}"><td>{link}</td><td>{status}</td><td>{text}</td>'
        f"<td>{run.get('started', '')}</td><td>{took}</td></tr>"
    )


def _table(rows: list[str]) -> str:
    head = "<tr><th>report</th><th>status</th><th>summary</th><th>started</th><th>took</th></tr>"
    return f"<table><thead>{head}</thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


def _index_page(root: Path, records: list[dict[str, Any]], latest: str | None) -> str:
    sections = []
    published = next((r for r in records if r.get("id") == latest), None)
    if published:
        rows = [_row(run, "", root) for run in published["notebooks"]]
        sections.append(
            f"<h2>Latest report: {html.escape(published['id'])} ({published['status']})</h2>\n{_table(rows)}"
        )
    else:
        sections.append("<p>No report has run to its end yet.</p>")
    sections.append("<h2>Every report, newest first</h2>")
    for record in records:
        params = ", ".join(f"{k}={v}" for k, v in record.get("parameters", {}).items()) or "defaults"
        title = (
            f"<h2><code>{html.escape(record['id'])}</code>: {record['status']} · started {record.get('started', '')}"
            f" · {html.escape(params)}</h2>"
        )
        sections.append(title + "\n" + _table([_row(run, f"{record['id']}/", root) for run in record["notebooks"]]))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>plantlib reports</title>
<style>{_STYLE}</style></head><body>
<h1>plantlib reports</h1>
<p>Generated {time.strftime("%Y-%m-%d %H:%M:%S")}. Each report keeps its notebooks (.ipynb) and pages in its own
folder; the latest report that ran to its end is also copied here. An interrupted report never replaces it.</p>
{chr(10).join(sections)}
</body></html>
"""
