"""Are the heat maps about what the model learnt? The model-randomisation sanity check (Adebayo et al. 2018) and a
diagnosis of image-independent structure in maps (bands that stay put whatever the image shows).

Both work on deep copies and on the map functions of `inference.explain`; `benchmarks/saliency.py` prints the
figures on the built-in data, and 03 prints the check's one line.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from plantlib.errors import ConfigError
from plantlib.inference.explain import cam_maps, preprocess, upsample
from plantlib.inference.predictor import LoadedModel
from plantlib.models.backbones import Classifier, backbone_blocks, cam_target_layer

# Adebayo et al. 2018, "Sanity Checks for Saliency Maps": a map that stays the same when the model's weights are
# re-initialised shows the architecture or the image, not what the model learnt. Rank correlations of flattened
# maps (Spearman) say how much of a map survives; 1 means every pixel keeps its rank.
RANDOMISATIONS = ("cam", "all")  # head + backbone from the CAM layer's block up; the whole network
SANITY_THRESHOLD = 0.5  # median Spearman at or above this: the maps barely depend on the learned weights


def _blocks_from_top(model: Classifier, blocks: int | str) -> int:
    units = backbone_blocks(model)
    if blocks == "all":
        return len(units)
    if blocks == "cam":
        layer = cam_target_layer(model)
        holding = [i for i, unit in enumerate(units) if any(layer is m or layer in m.modules() for m in unit)]
        return len(units) - holding[-1]
    if isinstance(blocks, int) and 0 <= blocks <= len(units):
        return blocks
    raise ConfigError(f"blocks={blocks!r}: use one of {', '.join(RANDOMISATIONS)} or 0 to {len(units)}")


def randomised_copy(model: Classifier, blocks: int | str = "cam", seed: int = 0) -> Classifier:
    """A deep copy with the head and the top `blocks` backbone blocks re-initialised; `model` is not touched.

    `blocks` is a count from the top, "cam" (down to and including the block that holds the CAM layer) or "all".
    Each layer gets its own default initialisation (`reset_parameters`), drawn from `seed` without moving the
    global random state.
    """
    copy = deepcopy(model)
    count = _blocks_from_top(copy, blocks)
    units = backbone_blocks(copy)
    modules = [copy.head] + [module for unit in units[len(units) - count :] for module in unit]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for root in modules:
            for module in root.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return copy


def rank_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each map in `a` with the same-index map in `b` (flattened); NaN where one is flat."""
    from scipy.stats import ConstantInputWarning, spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps of shapes {a.shape} and {b.shape} cannot be compared pixel by pixel")
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        for x, y in zip(a.reshape(len(a), -1), b.reshape(len(b), -1), strict=True):
            values.append(spearmanr(x, y).statistic)
    return np.asarray(values, dtype=np.float64)


@dataclass(frozen=True)
class SanityCheck:
    """Model-randomisation test: the trained model's maps against those of a model with other weights."""

    paths: list[Path]
    class_idx: list[int]  # the class both maps explain: the trained model's prediction
    randomised: str  # what the other model is, for the sentence
    trained_maps: np.ndarray  # (N, h, w) at the CAM layer's resolution, each scaled to [0, 1]
    other_maps: np.ndarray
    spearman: np.ndarray  # (N,) at the CAM layer's resolution; NaN where a map is flat
    spearman_upsampled: np.ndarray  # (N,) at the input crop, after bilinear upsampling as in the overlays

    @property
    def median(self) -> float:
        return _median(self.spearman)

    @property
    def median_upsampled(self) -> float:
        return _median(self.spearman_upsampled)

    @property
    def undefined(self) -> int:
        """Images whose map is flat in one of the models (no ranks to correlate)."""
        return int(np.isnan(self.spearman).sum())

    @property
    def passed(self) -> bool:
        return self.median < SANITY_THRESHOLD

    def sentence(self) -> str:
        """One line for reports: the median correlation, over how many images, and what it means."""
        flat = f" ({self.undefined} with a flat map left out)" if self.undefined else ""
        if np.isnan(self.median):
            verdict = "no verdict: every map was flat (too small an input for this layer?)"
        elif self.passed:
            verdict = "maps depend on the learned weights"
        else:
            verdict = "maps barely change without the learned weights: they show the architecture or the image"
        return (
            "Sanity check (Adebayo et al. 2018): median Spearman correlation between the trained model's maps and "
            f"those of {self.randomised}: {self.median:.2f} over {len(self.spearman)} images{flat} — {verdict}"
        )


def _describe(blocks: int | str) -> str:
    if blocks == "all":
        return "a fully randomised model"
    if blocks == "cam":
        return "a randomised model (head and CAM-layer block re-initialised)"
    return f"a randomised model (head and top {blocks} blocks re-initialised)"


def saliency_sanity_check(
    loaded: LoadedModel,
    files: Sequence[Path],
    method: str = "gradcam",
    blocks: int | str = "cam",
    seed: int = 0,
    against: Classifier | None = None,
) -> SanityCheck:
    """Maps of the trained model and of a copy re-initialised from the head down (`randomised_copy(blocks)`),
    compared image by image; `against` compares with another model instead (e.g. one trained on shuffled labels,
    the paper's data-randomisation test). The loaded model is left as it was."""
    images = preprocess(loaded, files)
    trained, probabilities = cam_maps(loaded.model, images, method)
    predicted = probabilities.argmax(1).tolist()
    other_model = randomised_copy(loaded.model, blocks, seed) if against is None else against
    other, _ = cam_maps(other_model, images, method, class_idx=predicted)
    size = loaded.image_size
    return SanityCheck(
        paths=[Path(f) for f in files],
        class_idx=predicted,
        randomised=_describe(blocks) if against is None else "the other model",
        trained_maps=trained,
        other_maps=other,
        spearman=rank_correlations(trained, other),
        spearman_upsampled=rank_correlations(upsample(trained, size), upsample(other, size)),
    )


def image_independence(maps: np.ndarray) -> np.ndarray:
    """Per map, its Spearman correlation with the mean of all the other maps. Near 1: the maps share one pattern
    whatever the image shows (a position cue); near 0: each map follows its own image."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    if len(flat) < 3:
        raise ValueError(f"image independence needs 3 or more maps, got {len(flat)}")
    others = (flat.sum(0) - flat) / (len(flat) - 1)
    return rank_correlations(flat, others)


def agreement(maps: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per map, its Spearman correlation with one reference map (e.g. the map of a blank image)."""
    maps = np.asarray(maps, dtype=np.float64)
    return rank_correlations(maps, np.broadcast_to(np.asarray(reference, dtype=np.float64), maps.shape))


def contrast(raw_maps: np.ndarray) -> np.ndarray:
    """Per raw (unscaled) map, its standard deviation over its mean: how far from flat it is before the [0, 1]
    scaling of every overlay stretches it; NaN for an all-zero map."""
    flat = np.asarray(raw_maps, dtype=np.float64).reshape(len(raw_maps), -1)
    mean = flat.mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mean > 0, flat.std(1) / mean, np.nan)


def shift_test(
    model: torch.nn.Module,
    images: torch.Tensor,
    class_idx: Sequence[int],
    method: str = "gradcam",
    layer: str | None = None,
    cells: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Per image, (follows the image, stays in place): the Spearman correlation of its map with the map of the
    image rolled (circularly) by `cells` map cells down and right, rolled back, and with that map as it comes.
    A map drawn by the content moves with it; one drawn by position cues (the borders: a convolution alone
    cannot tell where it is) stays where it was. Unlike a mirror image, a shift also moves symmetric patterns."""
    maps, _ = cam_maps(model, images, method, class_idx, layer)
    side, size = maps.shape[-1], images.shape[-1]
    pixels = round(cells * size / side)
    shifted, _ = cam_maps(model, images.roll((pixels, pixels), dims=(-2, -1)), method, class_idx, layer)
    return rank_correlations(maps, np.roll(shifted, (-cells, -cells), axis=(-2, -1))), rank_correlations(maps, shifted)


def _median(values: np.ndarray) -> float:
    """The median of the finite values, NaN (without a warning) when there are none."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return float(np.median(finite)) if finite.size else float("nan")


def content_free_images(loaded: LoadedModel, noise_images: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A mid-grey image and uniform-noise images, normalised as the network takes them: their maps show what a
    model marks without any content to follow."""
    size = loaded.image_size
    mean = torch.tensor(loaded.normalization.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.normalization.std).view(1, 3, 1, 1)
    noise = torch.rand(noise_images, 3, size, size, generator=torch.Generator().manual_seed(seed))
    grey = torch.full((1, 3, size, size), 0.5)
    return {name: ((pixels - mean) / std).to(loaded.device) for name, pixels in (("blank", grey), ("noise", noise))}


def finer_layer(model: Classifier, image_size: int) -> str:
    """The dotted path of the last backbone block whose output is finer than the CAM layer's (e.g. 14x14 under
    7x7): the earlier, finer layer to read maps from."""
    names = {id(module): name for name, module in model.named_modules()}
    sides: dict[str, int] = {}
    hooks = [
        unit[-1].register_forward_hook(lambda m, _i, out: sides.__setitem__(names[id(m)], out.shape[-1]))
        for unit in backbone_blocks(model)
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    cam_side = sides[list(sides)[-1]]
    finer = [name for name, side in sides.items() if side > cam_side]
    if not finer:
        raise ConfigError(f"{model.backbone_name} has no block finer than its CAM layer at image_size={image_size}")
    return finer[-1]


def banding_diagnosis(
    model: torch.nn.Module,
    images: torch.Tensor,
    class_idx: int,
    references: dict[str, torch.Tensor],
    method: str = "gradcam",
    layer: str | None = None,
) -> dict[str, float]:
    """Medians over `images` of what separates a position cue from content, for maps of class `class_idx`:
    image independence at the layer's resolution and upsampled, the shift test, the raw maps' contrast, and
    agreement with the mean map of each content-free reference (`content_free_images`)."""
    targets = [class_idx] * len(images)
    raw, _ = cam_maps(model, images, method, targets, layer, normalized=False)
    follows, stays = shift_test(model, images, targets, method, layer)
    size = images.shape[-1]
    result = {
        "map_side": float(raw.shape[-1]),
        "independence": _median(image_independence(raw)),
        "independence_upsampled": _median(image_independence(upsample(raw, size))),
        "follows_shift": _median(follows),
        "stays_in_place": _median(stays),
        "contrast": _median(contrast(raw)),
    }
    for name, pictures in references.items():
        reference, _ = cam_maps(model, pictures, method, [class_idx] * len(pictures), layer, normalized=False)
        result[f"agrees_with_{name}"] = _median(agreement(raw, reference.mean(0)))
    return result
