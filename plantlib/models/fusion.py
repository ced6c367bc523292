"""Fast forms of a backbone: TF "same" padding made static, and fixed BatchNorm fused into convolutions.

Both rewrites compute the same function as the original network. Fusing removes a BatchNorm's forward,
backward and saved activations from every training step, which on a CPU is about a third of the memory
and a tenth of the time of fine-tuning; it is only valid while the BatchNorm statistics stay fixed
(`freeze_bn`, or evaluation).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


def _children_of_type(root: nn.Module, kind: type) -> list[tuple[nn.Module, str, nn.Module]]:
    return [
        (parent, name, child)
        for parent in root.modules()
        for name, child in parent.named_children()
        if isinstance(child, kind)
    ]


def make_same_padding_static(net: nn.Module) -> int:
    """Replace stride-1 dynamic "same" convolutions of efficientnet_lite_pytorch with plain padded ones.

    For stride 1 and an odd kernel, TF "same" padding is symmetric, so `nn.Conv2d(padding=k // 2)` is exact
    and skips the per-call `F.pad` copy. Strided convolutions (asymmetric padding) are left as they are.
    Returns how many were replaced.
    """
    from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding

    replaced = 0
    for parent, name, conv in _children_of_type(net, Conv2dDynamicSamePadding):
        kernel, stride, dilation = conv.kernel_size, tuple(conv.stride), conv.dilation
        if stride != (1, 1) or any(k % 2 == 0 for k in kernel):
            continue
        static = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            kernel,
            stride=1,
            padding=tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True)),
            dilation=dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
        )
        static.load_state_dict(conv.state_dict())
        setattr(parent, name, static)
        replaced += 1
    return replaced


def use_inplace_relu6(net: nn.Module) -> int:
    """Make efficientnet_lite's ReLU6 layers work in place; returns how many.

    Each one follows a convolution or BatchNorm whose backward pass does not need its output, so
    overwriting that output is safe and saves one activation-sized buffer per layer.
    """
    layers = [m for m in net.modules() if isinstance(m, nn.ReLU6)]
    for layer in layers:
        layer.inplace = True
    return len(layers)


def conv_batchnorm_pairs(net: nn.Module, example: torch.Tensor) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) pairs where the BatchNorm's input is exactly the convolution's output, found by a forward pass.

    Tracing the real call order works for any architecture (no per-model table of layer names).
    """
    last: dict[str, object] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def after_conv(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        last["conv"], last["output"] = module, output

    def before_bn(module: nn.Module, inputs: tuple) -> None:
        if last.get("output") is inputs[0]:
            pairs.append((last["conv"], module))  # type: ignore[arg-type]

    handles = [m.register_forward_hook(after_conv) for m in net.modules() if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_pre_hook(before_bn) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(example)
    finally:
        for handle in handles:
            handle.remove()
        net.train(was_training)
    return pairs


def fuse_batchnorm(net: nn.Module, example: torch.Tensor | None = None) -> int:
    """Fuse every BatchNorm2d that directly follows a convolution into it (weights and bias), in place.

    The convolution gains a trainable bias; the BatchNorm becomes `nn.Identity`. Checked: the fused network
    gives the same output as before on `example`, else nothing is left half-changed and ValueError is raised.
    Returns how many BatchNorms were fused.
    """
    example = torch.rand(2, 3, 64, 64) if example is None else example
    pairs = conv_batchnorm_pairs(net, example)
    if not pairs:
        return 0
    was_training = net.training
    net.eval()
    with torch.no_grad():
        before = net(example)
    fused_ids = {id(bn) for _, bn in pairs}
    saved = [(conv, conv.weight, conv.bias) for conv, _ in pairs]
    replacements = [(p, n, c) for p, n, c in _children_of_type(net, nn.BatchNorm2d) if id(c) in fused_ids]
    for conv, bn in pairs:
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        bias.requires_grad_(weight.requires_grad)  # a conv without bias gets one, trainable like its weight
        conv.weight, conv.bias = weight, bias
    for parent, name, _ in replacements:
        setattr(parent, name, nn.Identity())
    with torch.no_grad():
        after = net(example)
    scale = max(1.0, float(before.abs().max()))  # float rounding grows with depth and activation size
    if not torch.allclose(before, after, rtol=1e-3, atol=1e-3 * scale):
        for conv, weight, bias in saved:
            conv.weight, conv.bias = weight, bias
        for parent, name, bn in replacements:
            setattr(parent, name, bn)
        net.train(was_training)
        raise ValueError("fusing BatchNorm changed the network's output; the architecture reuses a conv output")
    net.train(was_training)
    return len(pairs)


def has_batchnorm2d(net: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
