"""The model behind the API: a checkpoint (through `load_model`, OpenVINO by default) or an exported ONNX file.

Both decode and crop an upload exactly as `plantlib predict` does (the decoded-image cache, then `eval_transform`),
so a served probability equals a predicted one. Heat maps need gradients, so only a checkpoint explains.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from plantlib.checkpoint import find_checkpoint
from plantlib.data import DecodedImageCache, eval_transform
from plantlib.data.dataset import resize_side
from plantlib.errors import ConfigError, PlantlibError
from plantlib.evaluation.metrics import interval, predict_probabilities, with_ci
from plantlib.inference.engine import import_openvino
from plantlib.inference.export import model_card
from plantlib.inference.predictor import LoadedModel, load_model, with_flips
from plantlib.runs import RunDir

MODEL_CARD_NAME = "MODEL_CARD.md"  # written next to the ONNX file by `plantlib export`
EXPLAIN_NEEDS_CHECKPOINT = (
    "explain=true needs the checkpoint (an ONNX export has no gradients): serve the run directory instead"
)


class ExplainUnavailable(PlantlibError):
    """The served model cannot draw heat maps (an ONNX export has no gradients)."""


@dataclass(frozen=True)
class ModelInfo:
    """What a client may know about the served model: `GET /model` and every prediction's `model` field."""

    name: str
    version: str | None
    kind: str  # "checkpoint" or "onnx"
    engine: str
    source: str
    class_names: list[str]
    image_size: int
    explains: bool
    metrics: dict[str, Any] | None = None  # the run's test metrics with their intervals, when the run is known
    card: str | None = None  # the model card (Markdown)
    preprocessing: dict[str, Any] = field(default_factory=dict)


class ServedModel(Protocol):
    """A model the app serves: decode one file, predict a batch of crops, explain one file."""

    info: ModelInfo

    def image_cache(self) -> DecodedImageCache: ...

    def prepare(self, path: Path, cache: DecodedImageCache) -> torch.Tensor: ...

    def probabilities(self, crops: torch.Tensor, tta: bool) -> np.ndarray: ...

    def overlay_png(self, path: Path, cache: DecodedImageCache) -> bytes: ...


class CheckpointModel:
    """A checkpoint as `load_model` rebuilds it (OpenVINO forward by default, torch for heat maps)."""

    def __init__(self, loaded: LoadedModel, info: ModelInfo) -> None:
        self.loaded = loaded
        self.info = info
        self._transform = eval_transform(loaded.image_size, loaded.normalization, normalize=not loaded.takes_uint8)

    def image_cache(self) -> DecodedImageCache:
        return self.loaded.image_cache()

    def prepare(self, path: Path, cache: DecodedImageCache) -> torch.Tensor:
        return self._transform(cache.get(path))

    def probabilities(self, crops: torch.Tensor, tta: bool) -> np.ndarray:
        forward = with_flips(self.loaded.forward) if tta or self.loaded.tta else self.loaded.forward
        return predict_probabilities(forward, [crops], self.loaded.device, self.loaded.dtype)

    def overlay_png(self, path: Path, cache: DecodedImageCache) -> bytes:
        from plantlib.inference.explain import explain_files, overlay

        picture = overlay(explain_files(self.loaded, [path], cache=cache)[0])
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return buffer.getvalue()


class OnnxModel:
    """An ONNX file written by `plantlib export` (uint8 crops in, probabilities out), compiled by OpenVINO."""

    def __init__(self, path: Path, info: ModelInfo, metadata: dict[str, str]) -> None:
        openvino = import_openvino()
        self.info = info
        self.image_size = int(metadata["image_size"])
        self.resize_side = int(metadata.get("resize_side", resize_side(self.image_size)))
        settings = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        settings["INFERENCE_NUM_THREADS"] = torch.get_num_threads()
        compiled = openvino.Core().compile_model(str(path), "CPU", settings)
        self._request = compiled.create_infer_request()
        self._transform = eval_transform(self.image_size, normalize=False)

    def image_cache(self) -> DecodedImageCache:
        return DecodedImageCache(max_side=self.resize_side)

    def prepare(self, path: Path, cache: DecodedImageCache) -> torch.Tensor:
        return self._transform(cache.get(path))

    def probabilities(self, crops: torch.Tensor, tta: bool) -> np.ndarray:
        views = (crops, crops.flip(-1), crops.flip(-2)) if tta else (crops,)
        outputs = [self._request.infer({0: view.contiguous().numpy()})[0].astype(np.float64) for view in views]
        return np.mean(outputs, axis=0)

    def overlay_png(self, path: Path, cache: DecodedImageCache) -> bytes:
        raise ExplainUnavailable(EXPLAIN_NEEDS_CHECKPOINT)


def open_model(source: Path, engine: str = "auto", name: str | None = None, version: str | None = None) -> ServedModel:
    """The served model for a run directory, a checkpoint, an export folder or an .onnx file."""
    onnx_file = find_onnx(Path(source))
    if onnx_file is not None:
        return _open_onnx(onnx_file, engine, name, version)
    loaded = load_model(Path(source), engine=engine)
    run = RunDir(loaded.run_dir)
    info = ModelInfo(
        name=name or run.name,
        version=version or file_version(loaded.checkpoint_path),
        kind="checkpoint",
        engine=loaded.engine,
        source=str(loaded.checkpoint_path),
        class_names=list(loaded.class_names),
        image_size=loaded.image_size,
        explains=True,
        metrics=run.read_metrics() if run.metrics_file.is_file() else None,
        card=_checkpoint_card(run, loaded),
        preprocessing=_preprocessing(loaded.image_size, resize_side(loaded.image_size), asdict(loaded.normalization)),
    )
    return CheckpointModel(loaded, info)


def find_onnx(source: Path) -> Path | None:
    """The ONNX file `source` names or holds (an export folder holds one), else None; a checkpoint is not one."""
    if source.suffix == ".onnx":
        if not source.is_file():
            raise PlantlibError(f"{source} does not exist; pass the .onnx file `plantlib export` wrote")
        return source
    if not source.is_dir() or RunDir(source).is_run():
        return None
    found = sorted(source.glob("*.onnx"))
    if len(found) > 1:
        raise PlantlibError(f"{source} holds {len(found)} .onnx files; pass the one to serve")
    return found[0] if found else None


def check_source(source: Path) -> None:
    """Raise a one-line error now, before a server starts, when `source` cannot be a model."""
    if find_onnx(Path(source)) is None:
        find_checkpoint(Path(source))


def file_version(path: Path) -> str:
    """A version for a local model file: the start of its SHA-256, so two servers of the same weights agree."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()[:12]}"


def _open_onnx(path: Path, engine: str, name: str | None, version: str | None) -> OnnxModel:
    if engine == "torch":
        raise ConfigError("an ONNX model runs on OpenVINO; use --engine auto or openvino, or serve the checkpoint")
    metadata = onnx_metadata(path)
    run = RunDir(path.parent.parent)  # `plantlib export` writes RUN/export/RUN.onnx
    card_file = path.parent / MODEL_CARD_NAME
    image_size = int(metadata["image_size"])
    info = ModelInfo(
        name=name or path.stem,
        version=version or file_version(path),
        kind="onnx",
        engine="openvino",
        source=str(path),
        class_names=list(json.loads(metadata["class_names"])),
        image_size=image_size,
        explains=False,
        metrics=run.read_metrics() if run.is_run() and run.metrics_file.is_file() else None,
        card=card_file.read_text(encoding="utf-8") if card_file.is_file() else None,
        preprocessing=_preprocessing(image_size, int(metadata.get("resize_side", resize_side(image_size))), None),
    )
    return OnnxModel(path, info, metadata)


def onnx_metadata(path: Path) -> dict[str, str]:
    """The metadata `plantlib export` stores in the ONNX file (class names, input size, preprocessing)."""
    import onnx

    props = {entry.key: entry.value for entry in onnx.load(str(path), load_external_data=False).metadata_props}
    missing = {"class_names", "image_size"} - set(props)
    if missing:
        raise PlantlibError(f"{path} lacks metadata {sorted(missing)}; export the run again with `plantlib export`")
    return props


def _checkpoint_card(run: RunDir, loaded: LoadedModel) -> str | None:
    """The model card of a finished run (None while the run has no test metrics)."""
    try:
        return model_card(run.path, loaded)
    except (PlantlibError, OSError, KeyError, ValueError):
        return None


def _preprocessing(image_size: int, side: int, normalization: dict[str, Any] | None) -> dict[str, Any]:
    steps = {
        "decode": "EXIF orientation applied, 8-bit RGB; longer side cut to at most 3:1",
        "resize_shorter_side": side,
        "center_crop": image_size,
    }
    if normalization is not None:
        steps["normalization"] = {key: list(value) for key, value in normalization.items()}
    return steps


HEADLINE_METRICS = (("accuracy", "accuracy", "Accuracy"), ("f1", "f1_macro", "Macro F1"), ("ece", "ece", "ECE"))


def headline_metrics(metrics: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The test metrics a page shows, each with its 95% interval and the test set's size n."""
    if not metrics:
        return []
    rows = []
    for key, ci_key, label in HEADLINE_METRICS:
        if metrics.get(key) is None:
            continue
        ci = interval(metrics, ci_key)
        text = with_ci(float(metrics[key]), ci)
        rows.append({"name": label, "value": float(metrics[key]), "ci95": ci, "n": metrics.get("n"), "text": text})
    return rows
