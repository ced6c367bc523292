"""What `plantlib report` prints while notebooks run: each code cell as it starts and every line a notebook prints.

Papermill's own `--log-output` sends the same through `logging`, one record per output with the whole text; here
lines stay whole and are indented under their notebook, so minutes of training read like `plantlib train`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any

from papermill.engines import NBClientEngine, papermill_engines

ENGINE_NAME = "plantlib-console"


class CellEchoEngine(NBClientEngine):
    """Papermill's nbclient engine that also calls `cell_started(index)` as each cell starts."""

    @classmethod
    def execute_managed_notebook(
        cls, nb_man: Any, kernel_name: str, cell_started: Callable[[int], None] | None = None, **kwargs: Any
    ) -> Any:
        if cell_started is not None:
            start = nb_man.cell_start

            def announce_then_start(cell: Any, cell_index: int | None = None, **more: Any) -> Any:
                if cell.cell_type == "code" and cell_index is not None:
                    cell_started(cell_index)
                return start(cell, cell_index, **more)

            nb_man.cell_start = announce_then_start
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


papermill_engines.register(ENGINE_NAME, CellEchoEngine)


class NotebookConsole:
    """Terminal echo of one notebook: `cell n/N` as code cells start, then its printed lines, indented.

    Passed to papermill as `stdout_file` (it receives the kernel's stdout) and its `cell_started` to the engine.
    """

    def __init__(self, name: str, code_cells: int, stream: IO[str] | None = None) -> None:
        self.name = name
        self.code_cells = code_cells  # papermill's injected parameter cell included
        self.stream = stream or sys.stdout
        self.started = 0
        self._partial = ""

    def cell_started(self, index: int) -> None:
        self._flush_partial()
        self.started += 1
        self.stream.write(f"  {self.name}  cell {self.started}/{self.code_cells}\n")
        self.stream.flush()

    def write(self, text: str) -> int:
        lines = (self._partial + text.replace("\r", "\n")).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self.stream.write(f"      {line.rstrip()}\n")
        self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def _flush_partial(self) -> None:
        if self._partial.strip():
            self.stream.write(f"      {self._partial.rstrip()}\n")
        self._partial = ""


def summary_table(rows: list[tuple[str, str, float | None, str]]) -> str:
    """The closing table: notebook, status, seconds, summary (cut to the terminal's usual width)."""
    lines = [f"{'notebook':<22} {'status':<12} {'seconds':>7}  summary"]
    for name, status, seconds, summary in rows:
        took = "" if seconds is None else f"{seconds:.0f}"
        text = summary if len(summary) <= 100 else summary[:99] + "…"
        lines.append(f"{name:<22} {status:<12} {took:>7}  {text}")
    return "\n".join(lines)
