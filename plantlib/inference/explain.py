"""Why did the model say that? Class-activation heat maps (Grad-CAM, Grad-CAM++) through torchcam.

Maps are always computed on the torch network of a loaded checkpoint, also when its predictions come from
OpenVINO: the compiled graph has no gradients. The layer a map is read from is the backbone's last convolutional
feature map, named per backbone in the model registry (`BackboneSpec.cam_layer`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from plantlib.data import DecodedImageCache, eval_transform
from plantlib.data.names import as_text
from plantlib.errors import ConfigError, DataError
from plantlib.inference.predictor import LoadedModel, readable_images
from plantlib.models.backbones import cam_target_layer

CAM_METHODS = ("gradcam", "gradcampp")
OVERLAY_ALPHA = 0.5  # share of the photo in an overlay; the rest is the heat map's colour


@dataclass(frozen=True)
class Explanation:
    """One image explained: what the model predicted, how sure it was, and where it looked."""

    path: Path
    predicted: str
    probability: float
    heatmap: np.ndarray  # (H, W) in [0, 1] at the network's input crop, 1 = most evidence for `predicted`
    crop: Image.Image  # the centre crop the network saw, for overlays


def _cam_extractor(method: str, model: torch.nn.Module, layer: torch.nn.Module):  # type: ignore[no-untyped-def]
    from torchcam.methods import GradCAM, GradCAMpp

    if method not in CAM_METHODS:
        raise ConfigError(f"method={method!r} is not one of {', '.join(CAM_METHODS)}")
    return (GradCAM if method == "gradcam" else GradCAMpp)(model, target_layer=layer)


def preprocess(loaded: LoadedModel, files: Sequence[Path], cache: DecodedImageCache | None = None) -> torch.Tensor:
    """The normalised centre crops (N, 3, S, S) the torch network takes, on its device."""
    crops = cache or loaded.image_cache()
    normalised = eval_transform(loaded.image_size, loaded.normalization, normalize=True)
    return torch.stack([normalised(crops.get(Path(f))) for f in files]).to(loaded.device)


def _batch_maps(
    extractor: Callable[..., list[torch.Tensor]],
    model: torch.nn.Module,
    images: torch.Tensor,
    class_idx: Sequence[int] | None,
    normalized: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.detach().clone().requires_grad_(True)  # frozen leading blocks must not cut the gradients' path
    with torch.enable_grad():
        scores = model(images)
        probabilities = torch.softmax(scores.detach().float(), dim=1)
        target = probabilities.argmax(1).tolist() if class_idx is None else [int(i) for i in class_idx]
        maps = extractor(class_idx=target, scores=scores, normalized=normalized)[0].detach()
    return maps.float(), probabilities


def cam_maps(
    model: torch.nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    class_idx: Sequence[int] | None = None,
    layer: str | None = None,
    normalized: bool = True,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Maps (N, h, w) at the layer's own resolution, each for `class_idx` (None: its predicted class), and the
    probabilities (N, C). `layer` is a dotted module path in `model` (None: the backbone's `cam_layer`);
    `normalized=False` keeps the raw Grad-CAM values (after its ReLU) instead of scaling each map to [0, 1]."""
    target = cam_target_layer(model) if layer is None else model.get_submodule(layer)
    maps, probabilities = [], []
    with _cam_extractor(method, model, target) as extractor:
        for start in range(0, len(images), batch_size):
            chosen = None if class_idx is None else class_idx[start : start + batch_size]
            batch_maps, batch_probabilities = _batch_maps(
                extractor, model, images[start : start + batch_size], chosen, normalized
            )
            maps.append(batch_maps.cpu().numpy())
            probabilities.append(batch_probabilities.cpu().numpy())
    return np.concatenate(maps), np.concatenate(probabilities)


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """Maps (N, h, w) resized to (N, size, size) bilinearly, as the overlays show them."""
    tensor = torch.as_tensor(maps, dtype=torch.float32)[:, None]
    return torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear")[:, 0].numpy()


def explain_files(
    loaded: LoadedModel,
    files: Sequence[Path],
    method: str = "gradcam",
    batch_size: int = 16,
    cache: DecodedImageCache | None = None,
) -> list[Explanation]:
    """Heat maps for readable image files, each for its predicted class (eager torch, gradients on).

    `cache` holds images already decoded (e.g. by `readable_images`), so none is decoded twice.
    """
    model = loaded.model
    crops = cache or loaded.image_cache()
    visible = eval_transform(loaded.image_size, loaded.normalization, normalize=False)
    results: list[Explanation] = []
    with _cam_extractor(method, model, cam_target_layer(model)) as extractor:
        for start in range(0, len(files), batch_size):
            chunk = list(files[start : start + batch_size])
            maps, probabilities = _batch_maps(extractor, model, preprocess(loaded, chunk, crops), None, True)
            predicted = probabilities.argmax(1).tolist()
            upsampled = torch.as_tensor(upsample(maps.cpu().numpy(), loaded.image_size))
            for file, index, heat, probs in zip(chunk, predicted, upsampled, probabilities, strict=True):
                results.append(
                    Explanation(
                        path=Path(file),
                        predicted=loaded.class_names[index],
                        probability=float(probs[index]),
                        heatmap=heat.clamp(0, 1).numpy(),
                        crop=_as_picture(visible(crops.get(Path(file)))),
                    )
                )
    return results


def _as_picture(crop: torch.Tensor) -> Image.Image:
    """The centre crop the network saw (C, H, W, before normalisation), as a uint8 RGB picture."""
    array = crop.numpy() if crop.dtype == torch.uint8 else (crop.clamp(0, 1) * 255).round().byte().numpy()
    return Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)))


def overlay(explanation: Explanation, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The crop with its heat map laid over it in the 'jet' colours (red: most evidence)."""
    from torchcam.utils import overlay_mask

    # torchcam wants the map as a float image in [0, 1] (an 8-bit one overflows when it squares the values).
    mask = Image.fromarray(explanation.heatmap.astype(np.float32), mode="F")
    return overlay_mask(explanation.crop, mask, colormap="jet", alpha=alpha)


def overlay_function(loaded: LoadedModel, method: str = "gradcam") -> Callable[[Path], Image.Image]:
    """An image file -> its heat-map overlay, for the JupyterLab prediction browser and upload box."""
    return lambda path: overlay(explain_files(loaded, [Path(path)], method)[0])


def caption(explanation: Explanation, true: str | None = None) -> str:
    """ "name: true → predicted (p=…)", or "name: predicted (p=…)" without a label."""
    label = f"{true} → " if true is not None else ""
    return f"{Path(as_text(explanation.path)).name}: {label}{explanation.predicted} (p={explanation.probability:.2f})"


def heatmap_peak(heatmap: np.ndarray) -> tuple[float, float]:
    """Where a map is hottest, as (x, y) fractions of the crop's width and height (0,0 = top left)."""
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return (column + 0.5) / heatmap.shape[1], (row + 0.5) / heatmap.shape[0]


def explain_predictions(
    loaded: LoadedModel, predictions: pd.DataFrame, root: Path | None, per_group: int = 4, method: str = "gradcam"
) -> list[tuple[Image.Image, Image.Image, str]]:
    """(crop, overlay, caption) for the most confidently wrong and then the most confidently right predictions.

    `predictions` is an evaluation's frame (path, true, predicted, confidence, correct); relative paths are
    resolved against `root`. The captions carry the true class, so a wrong one reads "grass → dandelion".
    """
    from plantlib.data.names import file_in

    ranked = predictions.sort_values("confidence", ascending=False, kind="stable")
    chosen = pd.concat(
        [ranked[~ranked["correct"].astype(bool)].head(per_group), ranked[ranked["correct"]].head(per_group)]
    )
    if chosen.empty:
        return []
    explained = explain_files(loaded, [file_in(root, path) for path in chosen["path"]], method)
    return [(e.crop, overlay(e), caption(e, true)) for e, true in zip(explained, chosen["true"], strict=True)]


def explain_to_folder(
    loaded: LoadedModel, paths: Sequence[Path], out_dir: Path, method: str = "gradcam"
) -> tuple[pd.DataFrame, list[tuple[Path, str]]]:
    """One PNG per readable image (image | overlay, titled) and explanations.csv in `out_dir`.

    Unreadable files are skipped with a warning and returned with the reason, as everywhere else.
    """
    from plantlib.evaluation.plots import plot_explanations, save_figure
    from plantlib.io import write_text

    cache = loaded.image_cache()
    with loaded.preprocessing_threads():
        files, skipped = readable_images(paths, cache)
    if not files:
        raise DataError(f"no readable image among {[str(p) for p in paths]}; pass image files or folders of them")
    explanations = explain_files(loaded, files, method, cache=cache)
    out_dir = Path(out_dir)
    rows = []
    for number, item in enumerate(explanations):
        png = out_dir / f"{number:04d}-{Path(as_text(item.path)).stem[:60]}.png"
        save_figure(plot_explanations([(item.crop, overlay(item), caption(item))], method=method), png)
        x, y = heatmap_peak(item.heatmap)
        rows.append(
            {
                "path": as_text(item.path),
                "predicted": item.predicted,
                "probability": item.probability,
                "peak_x": round(x, 3),
                "peak_y": round(y, 3),
                "heatmap": png.name,
            }
        )
    frame = pd.DataFrame(rows)
    write_text(out_dir / "explanations.csv", frame.to_csv(index=False))
    return frame, skipped
