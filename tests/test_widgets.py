"""The notebook widgets work without a frontend: filters, paging, upload handling, and the static gallery."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from io import BytesIO
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import ipywidgets
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from plantlib.data.images import load_rgb
from plantlib.evaluation.metrics import predictions_frame
from plantlib.evaluation.plots import static_prediction_gallery
from plantlib.reporting.widgets import (
    BUTTON_PADDING,
    PIXELS_PER_CHARACTER,
    THUMBNAIL_SIDE,
    PredictionBrowser,
    UploadClassifier,
    classify_bytes,
    prediction_browser,
    upload_classifier,
)

CLASSES = ["dandelion", "grass"]
YELLOW = (230, 210, 40)
GREEN = (40, 180, 50)
JPEG_START = b"\xff\xd8"

# (file, true class index, probabilities): dandelion has one mistake, grass none.
ROWS = [
    ("dandelion/d0.png", 0, [0.9, 0.1]),
    ("dandelion/d1.png", 0, [0.6, 0.4]),
    ("dandelion/d2.png", 0, [0.2, 0.8]),
    ("grass/g0.png", 1, [0.3, 0.7]),
    ("grass/g1.png", 1, [0.05, 0.95]),
    ("grass/g2.png", 1, [0.4, 0.6]),
]


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Six small images; d0 is larger than a thumbnail so shrinking can be checked."""
    for path, label, _ in ROWS:
        file = tmp_path / path
        file.parent.mkdir(parents=True, exist_ok=True)
        size = (640, 480) if file.stem == "d0" else (40, 30)
        Image.new("RGB", size, YELLOW if label == 0 else GREEN).save(file)
    return tmp_path


@pytest.fixture
def frame() -> pd.DataFrame:
    return predictions_frame(
        [p for p, _, _ in ROWS], np.array([t for _, t, _ in ROWS]), np.array([p for _, _, p in ROWS]), CLASSES
    )


class ColourModel:
    """Stands in for LoadedModel: P(dandelion) is the image's mean red level, so yellow reads as dandelion."""

    class_names = CLASSES

    def __init__(self) -> None:
        self.seen: list[Path] = []

    def probabilities(self, files: Sequence[Path], batch_size: int = 32) -> np.ndarray:
        self.seen += list(files)
        red = np.array([np.asarray(load_rgb(f)[0], dtype=np.float64)[..., 0].mean() / 255 for f in files])
        return np.stack([red, 1 - red], axis=1)


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> bytes:
    buffer = BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_value(name: str, data: bytes) -> tuple[dict, ...]:
    """What ipywidgets 8's FileUpload holds after a browser upload."""
    return (
        {
            "name": name,
            "type": "image/png",
            "size": len(data),
            "content": memoryview(data),
            "last_modified": dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc),
        },
    )


# --- browser -----------------------------------------------------------------------------------------------------


def test_browser_builds_and_shows_the_first_row(frame: pd.DataFrame, root: Path) -> None:
    assert isinstance(prediction_browser(frame, root), ipywidgets.VBox)
    browser = PredictionBrowser(frame, root)
    assert browser.count_label.value == "6 of 6 images"
    assert browser.current["path"] == "dandelion/d0.png"
    assert bytes(browser.image.value).startswith(JPEG_START)
    assert max(Image.open(BytesIO(bytes(browser.image.value))).size) == THUMBNAIL_SIDE
    assert "dandelion/d0.png" in browser.details.value and "p=0.90" in browser.details.value
    assert "<table" in browser.details.value and "0.100" in browser.details.value
    assert browser.message.value == ""


def test_buttons_are_wide_enough_for_their_whole_labels(frame: pd.DataFrame, root: Path) -> None:
    """JupyterLab cut "wrong" to "wro…" and hid the upload button's file count in narrower buttons."""
    browser = PredictionBrowser(frame, root)
    upload = UploadClassifier(ColourModel()).upload

    def room(width: str) -> int:
        return (int(width.removesuffix("px")) - BUTTON_PADDING) // PIXELS_PER_CHARACTER

    assert room(browser.outcome_filter.style.button_width) >= max(len(o) for o in browser.outcome_filter.options)
    assert room(upload.layout.width) >= len(f"{upload.description} (1)")


def test_browser_and_upload_box_show_a_heat_map_beside_the_image(frame: pd.DataFrame, root: Path) -> None:
    seen: list[Path] = []

    def heat(path: Path) -> Image.Image:
        seen.append(Path(path))
        return Image.new("RGB", (64, 64), (255, 0, 0))

    browser = PredictionBrowser(frame, root, heatmap=heat)
    assert bytes(browser.heat.value).startswith(JPEG_START) and browser.heat.layout.display is None
    assert seen == [root / "dandelion" / "d0.png"]
    browser.step(1)
    browser.step(-1)
    assert len(seen) == 2  # computed once per image

    def broken(path: Path) -> Image.Image:
        raise RuntimeError("no gradients")

    failing = PredictionBrowser(frame, root, heatmap=broken)
    assert failing.heat.layout.display == "none" and "no heat map: RuntimeError: no gradients" in failing.details.value
    assert PredictionBrowser(frame, root).heat.layout.display == "none"  # none asked for

    box = UploadClassifier(ColourModel(), heatmap=heat)
    box.upload.value = upload_value("lawn.png", png_bytes(GREEN))
    assert bytes(box.heat.value).startswith(JPEG_START) and box.heat.layout.display is None


def test_filters_change_count_and_shown_row(frame: pd.DataFrame, root: Path) -> None:
    browser = PredictionBrowser(frame, root)
    browser.class_filter.value = "grass"
    assert browser.count_label.value == "3 of 6 images"
    assert browser.current["path"] == "grass/g0.png"
    assert "true: <b>grass</b>" in browser.details.value

    browser.class_filter.value = ""
    browser.outcome_filter.value = "wrong"
    assert browser.count_label.value == "1 of 6 images"
    assert browser.current["path"] == "dandelion/d2.png"
    assert "wrong" in browser.details.value

    browser.class_filter.value = "dandelion"
    browser.outcome_filter.value = "right"
    assert browser.count_label.value == "2 of 6 images"
    assert list(browser.rows["path"]) == ["dandelion/d0.png", "dandelion/d1.png"]


def test_navigation_moves_and_stops_at_the_ends(frame: pd.DataFrame, root: Path) -> None:
    browser = PredictionBrowser(frame, root)
    assert browser.previous_button.disabled and not browser.next_button.disabled
    browser.next_button.click()
    assert browser.current["path"] == "dandelion/d1.png"
    assert browser.slider.value == 2
    browser.slider.value = 6
    assert browser.current["path"] == "grass/g2.png"
    assert browser.next_button.disabled
    browser.step(5)
    assert browser.current["path"] == "grass/g2.png"
    browser.previous_button.click()
    assert browser.current["path"] == "grass/g1.png"
    browser.outcome_filter.value = "right"  # a filter change starts again at the first matching row
    assert browser.slider.value == 1 and browser.slider.max == 5
    assert browser.current["path"] == "dandelion/d0.png"


def test_empty_filter_shows_a_message(frame: pd.DataFrame, root: Path) -> None:
    browser = PredictionBrowser(frame, root)
    browser.slider.value = 4
    browser.class_filter.value = "grass"
    browser.outcome_filter.value = "wrong"
    assert browser.count_label.value == "0 of 6 images"
    assert browser.current is None
    assert "No images match grass and wrong predictions" in browser.message.value
    assert browser.image.layout.display == "none" and browser.details.value == ""
    assert browser.previous_button.disabled and browser.next_button.disabled
    browser.outcome_filter.value = "all"
    assert browser.message.value == "" and browser.current["path"] == "grass/g0.png"


def test_browser_reports_unreadable_images_and_unlabelled_frames(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.png", tmp_path / "bad.jpg"
    good.write_bytes(png_bytes(GREEN))
    bad.write_bytes(b"not a picture")
    unlabelled = predictions_frame([str(bad), str(good)], None, np.array([[0.3, 0.7], [0.8, 0.2]]), CLASSES)
    browser = PredictionBrowser(unlabelled)  # absolute paths need no root
    assert browser.outcome_filter.disabled
    assert "cannot show the image: not an image" in browser.details.value
    assert browser.image.layout.display == "none"
    browser.class_filter.value = "dandelion"  # without labels the class filter reads the prediction
    assert browser.count_label.value == "1 of 2 images"
    assert browser.current["path"] == str(good) and bytes(browser.image.value).startswith(JPEG_START)


def test_browser_rejects_a_frame_without_prediction_columns() -> None:
    with pytest.raises(ValueError, match="predictions_frame"):
        PredictionBrowser(pd.DataFrame({"path": ["a.png"]}))


# --- upload ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("colour", "expected"), [(YELLOW, "dandelion"), (GREEN, "grass")])
def test_classify_bytes_picks_the_class(colour: tuple[int, int, int], expected: str) -> None:
    model = ColourModel()
    result = classify_bytes(model, png_bytes(colour), "flower.PNG")
    assert result["error"] is None
    assert result["predicted"] == expected
    assert set(result["probabilities"]) == set(CLASSES)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    assert result["confidence"] == max(result["probabilities"].values())
    assert result["thumbnail"].startswith(JPEG_START)
    assert model.seen[0].suffix == ".png" and not model.seen[0].exists()  # the temporary file is cleaned up


@pytest.mark.parametrize(("data", "reason"), [(b"\x00garbage\xff" * 10, "not an image"), (b"", "empty file")])
def test_classify_bytes_reports_unreadable_bytes(data: bytes, reason: str) -> None:
    model = ColourModel()
    result = classify_bytes(model, data, "broken.jpg")
    assert reason in result["error"] and "broken.jpg" in result["error"]
    assert result["predicted"] is None and result["probabilities"] is None
    assert model.seen == []


def test_upload_handler_classifies_an_ipywidgets8_value() -> None:
    assert isinstance(upload_classifier(ColourModel()), ipywidgets.VBox)
    box = UploadClassifier(ColourModel())
    assert box.upload.accept == "image/*" and not box.upload.multiple

    box.upload.value = upload_value("lawn.png", png_bytes(GREEN))  # as if the browser sent it
    assert box.last_result["predicted"] == "grass"
    assert "predicted: <b>grass</b>" in box.result.value and "lawn.png" in box.result.value
    assert bytes(box.image.value).startswith(JPEG_START) and box.image.layout.display is None

    box.handle(upload_value("notes.png", b"hello"))
    assert "not an image" in box.result.value
    assert box.image.layout.display == "none"

    box.handle(())  # a cleared upload leaves the last answer in place
    assert "not an image" in box.result.value


# --- static gallery ----------------------------------------------------------------------------------------------


def image_axes(fig: Figure) -> list:
    return [ax for ax in fig.axes if ax.images]


def test_static_gallery_groups_by_class_and_outcome(frame: pd.DataFrame, root: Path) -> None:
    fig = static_prediction_gallery(frame, root)
    assert isinstance(fig, Figure)
    axes = image_axes(fig)
    assert len(axes) == len(fig.axes) == 6  # dandelion right 2, dandelion wrong 1, grass right 3; grass wrong empty
    titles = [ax.get_title() for ax in axes]
    assert titles[:3] == ["dandelion → dandelion p=0.90", "dandelion → dandelion p=0.60", "dandelion → grass p=0.80"]
    assert titles[3:] == ["grass → grass p=0.95", "grass → grass p=0.70", "grass → grass p=0.60"]
    labels = [ax.get_ylabel() for ax in axes if ax.get_ylabel()]
    assert labels == ["dandelion\nright (2 of 2)", "dandelion\nwrong (1 of 1)", "grass\nright (3 of 3)"]
    fig.savefig(BytesIO(), format="png", dpi=30)

    overlaid = static_prediction_gallery(frame, root, heatmap=lambda path: Image.new("RGB", (8, 8), (255, 0, 0)))
    tiles = [ax.images[0].get_array() for ax in image_axes(overlaid)]
    assert len(tiles) == 6 and all((tile[..., 0] == 255).all() and (tile[..., 1] == 0).all() for tile in tiles)
    assert "Grad-CAM" in overlaid.get_suptitle()


def test_static_gallery_limits_each_group(frame: pd.DataFrame, root: Path) -> None:
    fig = static_prediction_gallery(frame, root, per_group=1)
    assert len(image_axes(fig)) == 3
    assert [ax.get_title() for ax in image_axes(fig)][-1] == "grass → grass p=0.95"
    with pytest.raises(ValueError, match="per_group"):
        static_prediction_gallery(frame, root, per_group=0)


def test_static_gallery_of_nothing_says_so(frame: pd.DataFrame) -> None:
    fig = static_prediction_gallery(frame.iloc[0:0])
    assert image_axes(fig) == []
    assert "no predictions" in [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def test_static_gallery_groups_unlabelled_predictions_by_predicted_class(root: Path) -> None:
    paths = [p for p, _, _ in ROWS]
    unlabelled = predictions_frame(paths, None, np.array([p for _, _, p in ROWS]), CLASSES)
    fig = static_prediction_gallery(unlabelled, root, per_group=2)
    assert [ax.get_ylabel() for ax in image_axes(fig) if ax.get_ylabel()] == [
        "predicted\ndandelion (2 of 2)",
        "predicted\ngrass (2 of 4)",
    ]
    assert [ax.get_title() for ax in image_axes(fig)] == [
        "dandelion p=0.90",
        "dandelion p=0.60",
        "grass p=0.95",
        "grass p=0.80",
    ]
