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
