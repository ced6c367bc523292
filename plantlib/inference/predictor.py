"""Use a checkpoint: predict image files, evaluate a split of its run, or evaluate another labelled folder."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from plantlib.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, store_calibration
from plantlib.config import RunConfig
from plantlib.data import DataWarning, DecodedImageCache, Normalization, eval_transform
from plantlib.data.dataset import resize_side
from plantlib.data.images import ImageDecodeError, is_image_name
from plantlib.data.names import as_text, file_in
from plantlib.data.prepare import PreparedData, prepare_data
from plantlib.data.scan import scan_dataset
from plantlib.errors import ConfigError, DataError, PlantlibError
from plantlib.evaluation.calibration import (
    calibration_metrics,
    temperature_calibration,
    temperature_of,
    uncalibrated_probabilities,
)
from plantlib.evaluation.conformal import check_coverage, prediction_sets, set_labels
from plantlib.evaluation.metrics import (
    PROBABILITY_CLIP,
    compute_metrics,
    predict_logits,
    predict_probabilities,
    predictions_frame,
    save_evaluation,
)
from plantlib.inference.engine import Forward, compile_for_inference
from plantlib.models.backbones import Classifier, build_model, fuses_batchnorm
from plantlib.models.fusion import fuse_batchnorm
from plantlib.runs import RunDir
from plantlib.runtime import autocast_dtype, resolve_device, torch_threads


class Predictor(Protocol):
    """What evaluating and predicting need: one checkpoint (`LoadedModel`) or several (`inference.ensemble`)."""

    class_names: list[str]
    config: RunConfig

    @property
    def run_dir(self) -> Path: ...  # the run whose data (split file) evaluate_split reads

    @property
    def evaluation_dir(self) -> Path: ...  # where evaluate_split saves metrics and predictions

    @property
    def test_split(self) -> str: ...  # the split label of held-out images never used in training

    @property
    def description(self) -> str: ...  # what is predicting, for messages

    def image_cache(self) -> DecodedImageCache: ...

    def probabilities(
        self, files: Sequence[Path], batch_size: int = 32, cache: DecodedImageCache | None = None
    ) -> np.ndarray: ...

    def preprocessing_threads(self) -> contextlib.AbstractContextManager: ...


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint with everything needed to feed it correctly."""

    model: Classifier
    class_names: list[str]
    image_size: int
    normalization: Normalization
    config: RunConfig
    checkpoint_path: Path
    device: torch.device
    dtype: torch.dtype | None
    forward: Forward  # the model itself, or its OpenVINO compilation (see `plantlib.inference.engine`)
    engine: str = "torch"
    tta: bool = False  # test-time augmentation: average over the image and its mirror images (`with_flips`)
    calibration: dict[str, Any] | None = None  # the checkpoint's entry when applied (`load_model(calibrated=True)`)

    @property
    def temperature(self) -> float:
        """The temperature the model's logits are divided by (inside `model` and `forward`); 1 when uncalibrated."""
        return temperature_of(self.calibration)

    @property
    def conformal_scores(self) -> np.ndarray | None:
        """The validation images' conformal scores stored with the calibration (None when there are none)."""
        scores = (self.calibration or {}).get("conformal_scores")
        return np.asarray(scores, dtype=np.float64) if scores else None

    @property
    def run_dir(self) -> Path:
        return self.checkpoint_path.parent

    @property
    def evaluation_dir(self) -> Path:
        return self.run_dir

    @property
    def test_split(self) -> str:
        return "test"

    @property
    def description(self) -> str:
        return f"{self.checkpoint_path}" + (" with test-time augmentation" if self.tta else "")

    @property
    def takes_uint8(self) -> bool:
        """Whether `forward` normalises by itself and so takes the uint8 crop."""
        return bool(getattr(self.forward, "takes_uint8", False))

    def image_cache(self) -> DecodedImageCache:
        return DecodedImageCache(max_side=resize_side(self.image_size))

    def batches(
        self,
        files: Sequence[Path],
        batch_size: int = 32,
        cache: DecodedImageCache | None = None,
        workers: int = 1,
    ) -> Iterator[torch.Tensor]:
        """Preprocessed image batches in file order, built in this process.

        No DataLoader: without workers it only adds set-up per call, about a millisecond, which is a tenth of
        a single-image prediction. With `workers` > 1 a batch's images are decoded and cropped by that many
        threads (Pillow and torch release the GIL), using the cores a compiled forward pass leaves idle.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1")
        cache = cache or self.image_cache()
        transform = eval_transform(self.image_size, self.normalization, normalize=not self.takes_uint8)

        def prepare(file: Path) -> torch.Tensor:
            return transform(cache.get(Path(file)))

        chunks = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
        if workers <= 1 or len(files) <= 1:
            for chunk in chunks:
                yield torch.stack([prepare(file) for file in chunk])
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="plantlib-preprocess") as pool:
            for chunk in chunks:
                cache.prefetch(chunk, pool)  # decoded and stored first: the threads below only read the cache
                yield torch.stack(list(pool.map(prepare, chunk)))

    def probabilities(
        self, files: Sequence[Path], batch_size: int = 32, cache: DecodedImageCache | None = None
    ) -> np.ndarray:
        """Class probabilities (N, C) for image files, through this model's engine."""
        # Preprocessing threads only beside a compiled network: eager torch already uses every core itself.
        workers = torch.get_num_threads() if self.engine != "torch" else 1
        forward = with_flips(self.forward) if self.tta else self.forward
        with self.preprocessing_threads():
            batches = self.batches(files, batch_size, cache, workers)
            return predict_probabilities(forward, batches, self.device, self.dtype)

    def preprocessing_threads(self) -> contextlib.AbstractContextManager:
        """One torch thread around image decoding and transforms when another runtime does the forward pass."""
        return torch_threads(1) if self.engine != "torch" else contextlib.nullcontext()


def with_flips(forward: Forward) -> Forward:
    """Test-time augmentation: the batch, its horizontal and its vertical mirror image, probabilities averaged.

    Returns log-probabilities, so the softmax every caller applies gives the averaged probabilities back. Works
    on either engine's input (float or uint8 NCHW): a flip moves pixels and changes no value.
    """

    def averaged(images: torch.Tensor) -> torch.Tensor:
        views = (images, images.flip(-1), images.flip(-2))
        mean = torch.stack([torch.softmax(forward(view).float(), dim=1) for view in views]).mean(0)
        return mean.clamp_min(PROBABILITY_CLIP).log()  # the one clip of every log loss (plantlib.evaluation.metrics)

    return averaged


def load_model(
    checkpoint: Path,
    device: str = "auto",
    precision: str = "auto",
    engine: str = "auto",
    tta: bool = False,
    calibrated: bool = True,
) -> LoadedModel:
    """Rebuild the classifier stored in `checkpoint` (a .pt file or a run directory).

    `engine` picks the runtime for predictions: `auto` compiles the network with OpenVINO for fp32 CPU inference
    when it is installed (same logits, faster), `torch` keeps eager torch, `openvino` insists on OpenVINO.
    `tta` averages each prediction over the image and its mirror images (three forward passes, `with_flips`).
    `calibrated` applies the checkpoint's temperature (`divide_logits`), so every path that runs the model (either
    engine, heat maps, the ONNX export, serving) gives calibrated probabilities; a checkpoint without one, or
    `calibrated=False`, gives the network's own.
    """
    path = find_checkpoint(Path(checkpoint))
    payload = load_checkpoint(path)
    config = RunConfig.from_dict(payload["config"])
    target = resolve_device(device)
    folded = checkpoint_is_folded(payload)
    model = build_model(
        config.backbone,
        len(payload["class_names"]),
        pretrained=False,
        head=config.head,
        dropout=config.dropout,
        fuse_bn=folded,
    )
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} does not match backbone {config.backbone}: {error}") from error
    if not folded:
        fuse_batchnorm(model.backbone)  # exact in evaluation mode, and faster
    calibration = payload.get("calibration") if calibrated else None
    divide_logits(model, temperature_of(calibration))
    model.to(target, memory_format=torch.channels_last).eval()
    norm = payload["normalization"]
    normalization = Normalization(tuple(norm["mean"]), tuple(norm["std"]))
    dtype = autocast_dtype(precision, target, training=False)
    forward, engine_name = compile_for_inference(model, config.image_size, normalization, target, dtype, engine)
    return LoadedModel(
        model=model,
        class_names=list(payload["class_names"]),
        image_size=config.image_size,
        normalization=normalization,
        config=config,
        checkpoint_path=path,
        device=target,
        dtype=dtype,
        forward=forward,
        engine=engine_name,
        tta=tta,
        calibration=calibration,
    )


def divide_logits(model: Classifier, temperature: float) -> None:
    """Fold temperature scaling into the head's last linear layer: (W x + b) / T is computed as (W / T) x + b / T.

    Exact, and free at run time; unlike a wrapper module it leaves `model` a plain `Classifier`, so the OpenVINO
    compilation, Grad-CAM and the ONNX export run the calibrated network with no change of their own.
    """
    if temperature == 1.0:
        return
    if not temperature > 0:
        raise CheckpointError(f"calibration temperature {temperature} is not positive; recalibrate the checkpoint")
    last = [module for module in model.head.modules() if isinstance(module, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.div_(temperature)
        if last.bias is not None:
            last.bias.div_(temperature)


def checkpoint_is_folded(payload: dict[str, Any]) -> bool:
    """The BatchNorm form of a checkpoint's backbone, from its config (format 1 recorded it separately)."""
    if payload.get("version", 1) < 2:
        return bool(payload.get("bn_folded", False))
    config = payload["config"]
    return fuses_batchnorm(bool(config["freeze_bn"]), str(config["finetune"]))


def readable_images(paths: Sequence[Path], cache: DecodedImageCache) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand folders to their image files and drop unreadable ones (returned with the reason).

    Each readable image is decoded into `cache`, so predicting on it afterwards decodes nothing again.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p))
        else:
            files.append(path)
    good, bad = [], []
    for file in files:
        try:
            cache.get(file)
            good.append(file)
        except ImageDecodeError as error:
            bad.append((file, str(error)))
    if bad:
        listed = "\n  ".join(f"{p}: {why}" for p, why in bad[:10])
        warnings.warn(f"skipped {len(bad)} of {len(files)} files:\n  {listed}", DataWarning, stacklevel=2)
    return good, bad


def predict_files(
    loaded: Predictor, paths: Sequence[Path], batch_size: int = 32, coverage: float | None = None
) -> pd.DataFrame:
    """Class probabilities for image files or folders of them; unreadable files are skipped with a warning.

    With `coverage` (e.g. 0.9) a `prediction_set` column holds each image's conformal set ("dandelion|grass"),
    built from the checkpoint's stored validation scores: it holds the true class at least that often.
    """
    scores = None
    if coverage is not None:
        coverage = check_coverage(coverage)
        scores = stored_conformal_scores(loaded)
    cache = loaded.image_cache()
    with loaded.preprocessing_threads():
        files, _ = readable_images(paths, cache)
    if not files:
        raise DataError(f"no readable image among {[str(p) for p in paths]}; pass image files or folders of them")
    probs = loaded.probabilities(files, batch_size, cache)
    frame = predictions_frame([as_text(f) for f in files], None, probs, loaded.class_names)
    if scores is not None:
        frame["prediction_set"] = set_labels(prediction_sets(scores, probs, coverage), loaded.class_names)
    return frame


def stored_conformal_scores(loaded: Predictor) -> np.ndarray:
    """The conformal scores `loaded` carries, or an error saying how to get some."""
    if getattr(loaded, "tta", False):
        raise ConfigError(
            "prediction sets do not combine with test-time augmentation (the stored scores were made "
            "without it); drop --tta or --coverage"
        )
    scores = getattr(loaded, "conformal_scores", None)
    if scores is None:
        raise PlantlibError(
            f"{loaded.description} holds no conformal scores (prediction sets need one calibrated checkpoint, not an "
            "ensemble, loaded with calibration on); retrain, or run: plantlib calibrate RUN_DIR"
        )
    return scores


def run_data(loaded: Predictor) -> PreparedData:
    """The data a checkpoint's run was trained on: its recorded folder and split file, never a new split."""
    config = loaded.config
    info = RunDir(loaded.run_dir).read_info()
    if info.get("split_file") and Path(info["split_file"]).is_file():
        config = config.replace(split_file=info["split_file"], data_dir=info.get("data_dir", config.data_dir))
    return prepare_data(config.replace(new_split=False), show_progress=False)


def calibrate_checkpoint(checkpoint: Path, device: str = "auto", engine: str = "auto") -> dict[str, Any]:
    """(Re)fit a checkpoint's temperature and conformal scores on its run's validation split and store them in it
    (atomically): for checkpoints saved before calibration existed. The test split is not read."""
    loaded = load_model(Path(checkpoint), device=device, engine=engine, calibrated=False)
    data = run_data(loaded)
    if data.classes != loaded.class_names:
        raise DataError(f"the data now has classes {data.classes}, the checkpoint {loaded.class_names}")
    rows = data.frame("val")
    if rows.empty:
        raise DataError(f"the run of {loaded.checkpoint_path} has no validation images to calibrate on")
    with loaded.preprocessing_threads():
        logits = predict_logits(loaded.forward, loaded.batches(rows["file"].tolist()), loaded.device, loaded.dtype)
    calibration = temperature_calibration(logits.numpy(), rows["target"].to_numpy())
    store_calibration(loaded.checkpoint_path, calibration)
    return calibration


def inference_ms_per_image(run_dir: Path, max_images: int = 64, batch_size: int = 32) -> float:
    """Milliseconds per test image for decode + preprocess + forward, batched, after one warm-up batch."""
    loaded = load_model(Path(run_dir))
    files = run_data(loaded).frame("test")["file"].tolist()[:max_images]
    loaded.probabilities(files[:batch_size], batch_size)  # warm-up: first-call allocations, kernel selection
    started = time.perf_counter()
    loaded.probabilities(files, batch_size)
    return 1000 * (time.perf_counter() - started) / max(1, len(files))


def evaluate_split(loaded: Predictor, split: str = "test", save: bool = True) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics of the checkpoint on a split of the data it was trained on (the same split file).

    "test" means the images its training never saw: the test split, or for the fold models of a
    cross-validation evaluated together, the test split the folds left out.
    """
    data = run_data(loaded)
    rows = data.frame(loaded.test_split if split == "test" else split)
    if data.classes != loaded.class_names:
        raise DataError(f"the data now has classes {data.classes}, the checkpoint {loaded.class_names}")
    return _evaluate(loaded, rows, "" if split == "test" else split, loaded.evaluation_dir if save else None)


def evaluate_folder(
    loaded: Predictor, data_dir: Path, out_dir: Path | None = None
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Metrics on a folder-per-class directory (an external test set) whose classes the model knows."""
    data_dir = Path(data_dir)
    scan = scan_dataset(data_dir, show_progress=False)
    unknown = sorted(set(scan.classes) - set(loaded.class_names))
    if unknown:
        raise DataError(
            f"{data_dir} has classes {unknown} that the checkpoint does not know; it was trained on "
            f"{loaded.class_names}. Rename or remove those folders."
        )
    rows = scan.images[["path", "label"]].copy()
    rows["file"] = [file_in(data_dir, p) for p in rows["path"]]
    rows["target"] = rows["label"].map({c: i for i, c in enumerate(loaded.class_names)})
    target_dir = out_dir or loaded.evaluation_dir / "evaluations" / data_dir.name
    return _evaluate(loaded, rows, "", target_dir)


def _evaluate(
    loaded: Predictor, rows: pd.DataFrame, prefix: str, out_dir: Path | None
) -> tuple[dict[str, Any], pd.DataFrame]:
    if rows.empty:
        raise DataError(f"no images to evaluate in {out_dir or 'this selection'}")
    probs = loaded.probabilities(rows["file"].tolist())
    metrics = compute_metrics(rows["target"].to_numpy(), probs, loaded.class_names)
    calibration = getattr(loaded, "calibration", None)
    if calibration and not getattr(loaded, "tta", False):  # flips average calibrated probabilities: no way back
        raw = uncalibrated_probabilities(probs, temperature_of(calibration))
        metrics |= calibration_metrics(rows["target"].to_numpy(), raw, probs, calibration, loaded.class_names)
    frame = predictions_frame(rows["path"].tolist(), rows["target"].to_numpy(), probs, loaded.class_names)
    if out_dir is not None:
        metrics["files"] = {k: str(v) for k, v in save_evaluation(Path(out_dir), metrics, frame, prefix).items()}
    return metrics, frame
