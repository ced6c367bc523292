"""The try-it page in a real headless Chromium: upload a photo and see the prediction and its heat map; upload a
text file named .jpg and see the server's reason. Nothing is fetched from outside the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from plantlib.training.trainer import Trainer
from tests.conftest import CHROMIUM, requires_chromium, tiny_config, write_dataset
from tests.test_serve import serving

pytestmark = requires_chromium


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("page")
    data = write_dataset(root / "images", {"dandelion": 12, "grass": 12}, size=(120, 96))
    run_dir = Trainer.build(tiny_config(data, root / "runs", epochs=1), show_progress=False).fit().run_dir
    with serving(run_dir, root / "serve.log") as (_, url, _):
        yield url, data


def test_the_page_predicts_a_photo_and_explains_a_text_file_refusal(
    page_server: tuple[str, Path], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, data = page_server
    photo = sorted((data / "dandelion").glob("*.jpg"))[0]
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is text, not a photo")
    outside: list[str] = []
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's screen
        tab.on("request", lambda r: outside.append(r.url) if not r.url.startswith((url, "blob:", "data:")) else None)
        tab.on("pageerror", lambda e: problems.append(str(e)))
        tab.goto(url, wait_until="load")
        expect(tab.locator("#model-line")).to_contain_text("Model ", timeout=30_000)
        expect(tab.locator("#metrics-table")).to_contain_text("95% CI")
        tab.set_input_files("#pick", str(photo))
        card = tab.locator(".result").first
        expect(card.locator(".verdict")).to_contain_text("p = ", timeout=30_000)
        expect(card.locator(".bar")).to_have_count(2)
        expect(card.locator("img.overlay")).to_be_visible()
        assert tab.evaluate("document.querySelector('img.overlay').naturalWidth") == 64
        tab.screenshot(path=str(tmp_path / "prediction.png"), full_page=True)
        tab.set_input_files("#pick", str(fake))
        refused = tab.locator(".result").first
        expect(refused.locator(".error")).to_contain_text("notes.jpg: not an image", timeout=30_000)
        tab.screenshot(path=str(tmp_path / "refusal.png"), full_page=True)
        wide = tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        browser.close()
    assert outside == [] and problems == []
    assert wide, "the page scrolls sideways on a phone"
    assert (tmp_path / "prediction.png").stat().st_size > 10_000
