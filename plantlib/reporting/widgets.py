"""JupyterLab extras (ipywidgets) for looking at predictions.

`prediction_browser` pages through a predictions frame (filter by true class and by right/wrong), and
`upload_classifier` classifies an image dropped into the notebook. Widgets need a live kernel, so reports use
`plantlib.evaluation.plots.static_prediction_gallery`, a figure of example images per (true class × right/wrong) group.
"""

from __future__ import annotations

import html
import tempfile
from collections.abc import Callable, Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

import ipywidgets as widgets
import numpy as np
import pandas as pd
from PIL import Image

from plantlib.data.images import ImageDecodeError, load_rgb
from plantlib.evaluation.metrics import check_predictions_frame, class_columns
from plantlib.evaluation.plots import resolve_path

THUMBNAIL_SIDE = 320  # longest side of a widget thumbnail in pixels: sharp at notebook width, small to send
# Room per character of a button's label at JupyterLab's font size, plus the button's own padding: narrower buttons
# cut labels short ("wro…" for "wrong", the upload button's file count hidden).
PIXELS_PER_CHARACTER, BUTTON_PADDING = 9, 28


def button_width(*labels: str) -> str:
    """A CSS width that shows the longest of `labels` whole."""
    return f"{PIXELS_PER_CHARACTER * max(len(label) for label in labels) + BUTTON_PADDING}px"


_THUMBNAIL_CACHE_SIZE = 64  # thumbnails a browser keeps, so paging back and forth does not decode again
_ALL = ""  # class-filter value meaning "every class" (a class folder can never be named "")
_OUTCOMES = ("all", "right", "wrong")
# An image file -> its heat-map overlay (see `plantlib.inference.explain.overlay_function`).
HeatMap = Callable[[Path], Image.Image]


class ProbabilityModel(Protocol):
    """What `classify_bytes` needs from a model: `plantlib.inference.predictor.LoadedModel` satisfies it."""

    class_names: list[str]

    def probabilities(self, files: Sequence[Path], batch_size: int = 32) -> np.ndarray: ...


# --- helpers shared by the widgets and the gallery ---------------------------------------------------------------


def _thumbnail_jpeg(image: Image.Image, max_side: int = THUMBNAIL_SIDE) -> bytes:
    """A JPEG of `image` shrunk (never enlarged) so its longest side is at most `max_side` pixels."""
    small = image.copy()
    small.thumbnail((max_side, max_side))
    buffer = BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _probability_html(probabilities: Mapping[str, float], predicted: str) -> str:
    """A small table of horizontal bars, one per class, with the predicted class in bold."""
    rows = []
    for name, p in probabilities.items():
        weight = "bold" if name == predicted else "normal"
        colour = "#2a7ab9" if name == predicted else "#9bb7cc"
        bar = (
            '<div style="background:#eee;width:160px;height:12px">'
            f'<div style="background:{colour};width:{100 * p:.1f}%;height:12px"></div></div>'
        )
        rows.append(
            f'<tr style="font-weight:{weight}"><td style="padding-right:8px">{html.escape(name)}</td>'
            f'<td>{bar}</td><td style="padding-left:8px">{p:.3f}</td></tr>'
        )
    return f'<table style="border-collapse:collapse">{"".join(rows)}</table>'


def _error_html(message: str) -> str:
    return f'<span style="color:#b00020">{html.escape(message)}</span>'


# --- prediction browser -------------------------------------------------------------------------------------------


class PredictionBrowser:
    """State and widgets of `prediction_browser`; `widget` is what a notebook displays.

    The filtered rows are recomputed when a filter changes, and the slider (1-based) picks one of them. Frames
    without true labels (plain predictions) filter by predicted class and leave the right/wrong toggle disabled.
    """

    def __init__(self, frame: pd.DataFrame, root: Path | None = None, heatmap: HeatMap | None = None) -> None:
        check_predictions_frame(frame)
        self.heatmap = heatmap
        self._heatmaps: dict[Path, bytes | str] = {}
        self.frame = frame.reset_index(drop=True)
        self.root = Path(root) if root is not None else None
        self.classes = class_columns(frame)
        self.label_column = "true" if "true" in frame.columns else "predicted"
        self.has_outcome = "correct" in frame.columns
        self.rows = self.frame
        self._thumbnails: dict[Path, bytes | str] = {}

        self.class_filter = widgets.Dropdown(
            options=[("All", _ALL), *((c, c) for c in self.classes)], description=self.label_column
        )
        self.outcome_filter = widgets.ToggleButtons(
            options=_OUTCOMES,
            value="all",
            disabled=not self.has_outcome,
            style={"button_width": button_width(*_OUTCOMES)},
        )
        self.slider = widgets.IntSlider(value=1, min=1, max=1, description="image", continuous_update=False)
        self.previous_button = widgets.Button(description="◀ prev", layout=widgets.Layout(width="80px"))
        self.next_button = widgets.Button(description="next ▶", layout=widgets.Layout(width="80px"))
        self.count_label = widgets.Label()
        self.message = widgets.HTML()
        self.image = widgets.Image(format="jpeg", layout=widgets.Layout(max_width=f"{THUMBNAIL_SIDE}px"))
        self.heat = widgets.Image(format="jpeg", layout=widgets.Layout(max_width=f"{THUMBNAIL_SIDE}px", display="none"))
        self.details = widgets.HTML()
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.class_filter, self.outcome_filter]),
                widgets.HBox([self.previous_button, self.slider, self.next_button, self.count_label]),
                self.message,
                widgets.HBox([self.image, self.heat, self.details]),
            ]
        )

        self.class_filter.observe(self._on_filter, names="value")
        self.outcome_filter.observe(self._on_filter, names="value")
        self.slider.observe(self._on_slide, names="value")
        self.previous_button.on_click(lambda _: self.step(-1))
        self.next_button.on_click(lambda _: self.step(1))
        self.apply_filters()

    @property
    def position(self) -> int:
        """0-based index of the shown row within `rows`."""
        return self.slider.value - 1

    @property
    def current(self) -> pd.Series | None:
        """The shown row of the frame, or None when the filters match nothing."""
        return None if self.rows.empty else self.rows.iloc[self.position]

    def apply_filters(self) -> None:
        """Recompute `rows` from the filters and show the first of them."""
        keep = pd.Series(True, index=self.frame.index)
        if self.class_filter.value != _ALL:
            keep &= self.frame[self.label_column] == self.class_filter.value
        if self.has_outcome and self.outcome_filter.value != "all":
            keep &= self.frame["correct"].astype(bool) == (self.outcome_filter.value == "right")
        self.rows = self.frame[keep]
        n = len(self.rows)
        self.slider.value = 1  # before max, so shrinking max never clamps the value to a stale row
        self.slider.max = max(n, 1)
        self.slider.disabled = n <= 1
        self.count_label.value = f"{n} of {len(self.frame)} images"
        self.render()

    def step(self, delta: int) -> None:
        """Move `delta` rows forward (or back), stopping at either end."""
        self.slider.value = min(max(self.slider.value + delta, self.slider.min), self.slider.max)

    def render(self) -> None:
        row = self.current
        n = len(self.rows)
        self.previous_button.disabled = row is None or self.position == 0
        self.next_button.disabled = row is None or self.position >= n - 1
        if row is None:
            outcome = "" if self.outcome_filter.value == "all" else f" and {self.outcome_filter.value} predictions"
            chosen = self.class_filter.value or "any class"
            self.message.value = f"<i>No images match {html.escape(chosen)}{outcome}.</i>"
            self.image.value = b""
            self.image.layout.display = "none"
            self.heat.layout.display = "none"
            self.details.value = ""
            return
        self.message.value = ""
        path = resolve_path(row["path"], self.root)
        thumbnail = self._thumbnail(path)
        if isinstance(thumbnail, bytes):
            self.image.value = thumbnail
            self.image.layout.display = None
        else:
            self.image.value = b""
            self.image.layout.display = "none"
        heat = self._heat(path) if self.heatmap is not None and isinstance(thumbnail, bytes) else None
        self.heat.value = heat if isinstance(heat, bytes) else b""
        self.heat.layout.display = None if isinstance(heat, bytes) else "none"
        problem = heat if isinstance(heat, str) else None
        self.details.value = self._details_html(row, None if isinstance(thumbnail, bytes) else thumbnail, problem)

    def _details_html(self, row: pd.Series, unreadable: str | None, heat_problem: str | None = None) -> str:
        lines = [f"<code>{html.escape(str(row['path']))}</code>"]
        if unreadable is not None:
            lines.append(_error_html(f"cannot show the image: {unreadable}"))
        if heat_problem is not None:
            lines.append(_error_html(f"no heat map: {heat_problem}"))
        if "true" in row.index:
            lines.append(f"true: <b>{html.escape(str(row['true']))}</b>")
        verdict = ""
        if self.has_outcome:
            verdict = " ✓" if bool(row["correct"]) else ' <span style="color:#b00020">✗ wrong</span>'
        lines.append(f"predicted: <b>{html.escape(str(row['predicted']))}</b> (p={row['confidence']:.2f}){verdict}")
        probabilities = {c: float(row[f"p_{c}"]) for c in self.classes}
        return "<br>".join(lines) + _probability_html(probabilities, str(row["predicted"]))

    def _thumbnail(self, path: Path) -> bytes | str:
        """JPEG bytes of the image at `path`, or the reason it cannot be decoded."""
        if path not in self._thumbnails:
            if len(self._thumbnails) >= _THUMBNAIL_CACHE_SIZE:
                self._thumbnails.pop(next(iter(self._thumbnails)))
            try:
                self._thumbnails[path] = _thumbnail_jpeg(load_rgb(path)[0])
            except ImageDecodeError as error:
                self._thumbnails[path] = str(error)
        return self._thumbnails[path]

    def _heat(self, path: Path) -> bytes | str:
        """JPEG bytes of the heat-map overlay for `path` (computed once per image), or why there is none."""
        if path not in self._heatmaps:
            try:
                self._heatmaps[path] = _thumbnail_jpeg(self.heatmap(path))  # type: ignore[misc]
            except Exception as error:  # shown beside the image: a callback's error would go unseen
                self._heatmaps[path] = f"{type(error).__name__}: {error}"
        return self._heatmaps[path]

    def _on_filter(self, _change: dict[str, Any]) -> None:
        self.apply_filters()

    def _on_slide(self, _change: dict[str, Any]) -> None:
        self.render()


def prediction_browser(frame: pd.DataFrame, root: Path | None = None, heatmap: HeatMap | None = None) -> widgets.Widget:
    """Page through predictions in JupyterLab: filter by true class and right/wrong, see image and probabilities.

    `frame` comes from `evaluation.metrics.predictions_frame`; relative paths in it are resolved against `root`.
    `heatmap` (e.g. `plantlib.inference.explain.overlay_function(loaded)`) adds each image's heat-map overlay beside it.
    """
    return PredictionBrowser(frame, root, heatmap).widget


# --- upload and classify -----------------------------------------------------------------------------------------


def classify_bytes(loaded: ProbabilityModel, data: bytes, name: str, heatmap: HeatMap | None = None) -> dict[str, Any]:
    """Classify one image given as file bytes (an upload); `name` only supplies the file suffix.

    Returns `predicted`, `confidence`, `probabilities` ({class: p}), `thumbnail` (JPEG bytes), `heatmap` (JPEG
    bytes of `heatmap`'s overlay, when given) and `error`: None, or the reason the bytes are not a usable image,
    in which case the other values are None.
    """
    result: dict[str, Any] = {
        "name": name,
        "predicted": None,
        "confidence": None,
        "probabilities": None,
        "thumbnail": None,
        "heatmap": None,
        "error": None,
    }
    with tempfile.TemporaryDirectory(prefix="plantlib-upload-") as folder:
        path = Path(folder) / f"upload{Path(name).suffix.lower()}"
        path.write_bytes(bytes(data))
        try:
            image, _ = load_rgb(path)
        except ImageDecodeError as error:
            result["error"] = f"{name}: {error}"
            return result
        probs = np.asarray(loaded.probabilities([path]), dtype=np.float64)[0]
        heat = _thumbnail_jpeg(heatmap(path)) if heatmap is not None else None
    if probs.shape != (len(loaded.class_names),):
        raise ValueError(
            f"the model returned {probs.shape[0]} probabilities for classes {loaded.class_names}; "
            "its class_names do not match its outputs"
        )
    best = int(probs.argmax())
    result.update(
        predicted=loaded.class_names[best],
        confidence=float(probs[best]),
        probabilities={c: float(p) for c, p in zip(loaded.class_names, probs, strict=True)},
        thumbnail=_thumbnail_jpeg(image),
        heatmap=heat,
    )
    return result


class UploadClassifier:
    """State and widgets of `upload_classifier`; `widget` is what a notebook displays."""

    def __init__(self, loaded: ProbabilityModel, heatmap: HeatMap | None = None) -> None:
        self.loaded = loaded
        self.heatmap = heatmap
        self.last_result: dict[str, Any] | None = None
        label = "Upload image"
        width = button_width(f"{label} (1)")  # ipywidgets appends the number of files chosen
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description=label, layout={"width": width})
        self.image = widgets.Image(format="jpeg", layout=widgets.Layout(display="none"))
        self.heat = widgets.Image(format="jpeg", layout=widgets.Layout(display="none"))
        self.result = widgets.HTML("<i>Upload an image to classify it.</i>")
        self.widget = widgets.VBox([self.upload, widgets.HBox([self.image, self.heat, self.result])])
        self.upload.observe(self._on_upload, names="value")

    def handle(self, value: Sequence[Mapping[str, Any]]) -> None:
        """Classify the first file of a FileUpload value (ipywidgets 8: a tuple of dicts with name and content)."""
        if not value:
            return  # the value was cleared
        entry = value[0]
        try:
            result = classify_bytes(
                self.loaded, bytes(entry["content"]), str(entry.get("name", "upload")), self.heatmap
            )
        except Exception as error:  # a callback's exception only reaches the kernel log; show it where people look
            result = {"error": f"classification failed: {type(error).__name__}: {error}", "thumbnail": None}
        self.last_result = result
        if result["error"] is not None:
            self.image.value = b""
            self.image.layout.display = "none"
            self.heat.layout.display = "none"
            self.result.value = _error_html(result["error"])
            return
        self.image.value = result["thumbnail"]
        self.image.layout.display = None
        self.heat.value = result.get("heatmap") or b""
        self.heat.layout.display = None if result.get("heatmap") else "none"
        self.result.value = (
            f"<code>{html.escape(result['name'])}</code><br>"
            f"predicted: <b>{html.escape(result['predicted'])}</b> (p={result['confidence']:.2f})"
            + _probability_html(result["probabilities"], result["predicted"])
        )

    def _on_upload(self, change: dict[str, Any]) -> None:
        self.handle(change["new"])


def upload_classifier(loaded: ProbabilityModel, heatmap: HeatMap | None = None) -> widgets.Widget:
    """An upload box that classifies the image you drop on it with `loaded` (a `LoadedModel`), with its heat map
    beside it when `heatmap` is given."""
    return UploadClassifier(loaded, heatmap).widget
