"""Layers shared by several families."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: ImageNet normalisation of VGG19, which TTSR's LTE starts from.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MeanShift(nn.Conv2d):
    """Fixed 1x1 conv computing ``(x + sign * rgb_range * mean) / std`` per channel, never
    trained.  It is a conv, not a subtraction, because published checkpoints store its
    weight and bias (EDSR's convention, which TTSR's LTE and CSNLN both follow)."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float] = (1.0, 1.0, 1.0),
        sign: int = -1,
        rgb_range: float = 1.0,
    ) -> None:
        super().__init__(3, 3, kernel_size=1)
        std_t = torch.tensor(std, dtype=torch.float32)
        with torch.no_grad():
            self.weight.copy_(torch.diag(1.0 / std_t).view(3, 3, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(mean, dtype=torch.float32) / std_t)
        self.requires_grad_(False)


def conv_cat(conv: nn.Conv2d, *parts: torch.Tensor) -> torch.Tensor:
    """``conv(torch.cat(parts, dim=1))`` without materialising the concatenation: the sum of
    convolutions of each part with its slice of the weight (the bias added once)."""
    out, start = None, 0
    for part in parts:
        stop = start + part.shape[1]
        weight = conv.weight[:, start:stop]
        bias = conv.bias if out is None else None
        y = F.conv2d(part, weight, bias, conv.stride, conv.padding)
        out = y if out is None else out.add_(y)
        start = stop
    assert out is not None and start == conv.in_channels, "parts do not fill the conv input"
    return out


@torch.no_grad()
def fold_batchnorm(net: nn.Module) -> nn.Module:
    """``net`` for inference, in place: each BatchNorm that directly follows a convolution in
    a ``Sequential`` is folded into that convolution's weight and bias and replaced by an
    identity.  The affine map then costs nothing: the convolution writes the normalised map
    in the same pass, where the BatchNorm read and wrote every value once more (at a deep
    ResNet's widths that pass costs as much as a convolution).  The values differ from the
    unfolded network's by rounding only; its ``state_dict`` keys change, so a folded network
    is for running, not for saving or training."""
    for seq in net.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                _fold(conv, bn)
                seq[i + 1] = nn.Identity()
    return net.eval()


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """``bn(conv(x))`` as one convolution: the per-channel factors in float64, the weights
    scaled in place (a float64 copy of a deep network's weights would outlive the fold in
    the process's peak memory)."""
    assert bn.running_mean is not None and bn.running_var is not None
    mean, var = bn.running_mean.double(), bn.running_var.double()
    alpha = (var + bn.eps).rsqrt()
    shift = -mean * alpha
    if bn.affine:
        alpha, shift = alpha * bn.weight.double(), shift * bn.weight.double() + bn.bias.double()
    bias = shift if conv.bias is None else conv.bias.double() * alpha + shift
    conv.weight.mul_(alpha.to(conv.weight.dtype).view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)
