"""Screenshots of the top of each report page, as a reader first sees it, in headless Chromium.

    python -m benchmarks.screenshots [REPORT_DIR] [--out DIR] [--width 1280] [--height 1000]

REPORT_DIR defaults to the published report (artifacts/reports); the PNGs go to artifacts/bench/screenshots/
(`<page>-top.png`). For each page it also prints where the answer box (`plantlib.reporting.notebook.BOX_CLASS`)
starts, and whether it lies on that first screen and above the page's first other table and figure.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

from plantlib.paths import artifacts_dir, reports_dir
from plantlib.reporting.notebook import BOX_CLASS
from plantlib.reporting.runner import NOTEBOOKS

SCREENSHOTS_DIR = "screenshots"  # under artifacts/bench
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Page coordinates (px from the top) of the answer box, and of the first table and image outside it.
_POSITIONS = f"""() => {{
  const box = document.querySelector('.{BOX_CLASS}');
  const outside = (selector) => Array.from(document.querySelectorAll(selector)).filter(e => !e.closest('.{BOX_CLASS}'));
  const top = (e) => e ? e.getBoundingClientRect().top + window.scrollY : null;
  return {{box: top(box), table: top(outside('table')[0]), image: top(outside('img')[0])}};
}}"""


@dataclass
class PageTop:
    """Where a page's answer box sits, in pixels from the top of the page, and the screenshot of its first screen."""

    page: str
    screenshot: Path
    box: float | None
    first_table: float | None
    first_image: float | None
    screen_height: int

    @property
    def answer_first(self) -> bool:
        """The box is on the first screen, above every other table and figure."""
        others = [y for y in (self.first_table, self.first_image) if y is not None]
        return self.box is not None and self.box < self.screen_height and all(self.box < y for y in others)


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise SystemExit("no chromium on PATH; install it (apt-get install chromium) to take screenshots")
    return found


def page_tops(report_dir: Path, out_dir: Path, width: int = 1280, height: int = 1000) -> list[PageTop]:
    """Screenshot the first `width` x `height` screen of each notebook page in `report_dir` into `out_dir`."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    tops = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": width, "height": height})
        for name in NOTEBOOKS:
            page = report_dir / f"{name}.html"
            if not page.is_file():
                continue
            tab.goto(page.as_uri(), wait_until="load")
            found = tab.evaluate(_POSITIONS)
            shot = out_dir / f"{name}-top.png"
            tab.screenshot(path=str(shot), full_page=False)
            tops.append(PageTop(name, shot, found["box"], found["table"], found["image"], height))
        browser.close()
    return tops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report_dir", nargs="?", type=Path, default=None, help="default: artifacts/reports")
    parser.add_argument("--out", type=Path, default=None, help="default: artifacts/bench/screenshots")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    report_dir = (args.report_dir or reports_dir()).resolve()
    tops = page_tops(report_dir, args.out or artifacts_dir() / "bench" / SCREENSHOTS_DIR, args.width, args.height)
    if not tops:
        raise SystemExit(f"no report pages in {report_dir}; run plantlib report first")
    print(f"{'page':<22} {'box at':>7} {'table at':>8} {'figure at':>9}  answer first  screenshot")
    for top in tops:
        at = [f"{y:.0f}" if y is not None else "-" for y in (top.box, top.first_table, top.first_image)]
        first = "yes" if top.answer_first else "NO"
        print(f"{top.page:<22} {at[0]:>7} {at[1]:>8} {at[2]:>9}  {first:<12}  {top.screenshot}")


if __name__ == "__main__":
    main()
