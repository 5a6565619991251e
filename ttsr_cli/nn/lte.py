"""Learnable texture extractor (LTE, paper section 3.1).

The first twelve layers of VGG19 ``features`` split into three slices, preceded by a fixed
1x1 convolution that applies the ImageNet normalisation.  Module names keep VGG's layer
indices (``slice2.5``) so published TTSR checkpoints and torchvision VGG19 weights load as-is.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MeanShift(nn.Conv2d):
    """Fixed 1x1 conv computing ``(x - mean) / std`` per channel (never trained)."""

    def __init__(self) -> None:
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(IMAGENET_STD)
        with torch.no_grad():
            self.weight.copy_(torch.diag(1.0 / std).view(3, 3, 1, 1))
            self.bias.copy_(-torch.tensor(IMAGENET_MEAN) / std)
        self.requires_grad_(False)


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)


class LTE(nn.Module):
    """Texture features at three scales: lv1 (full res), lv2 (1/2) and lv3 (1/4).

    ``widths`` are the output channels of the three levels; (64, 128, 256) is VGG19's.
    Input is an image in [0, 1].
    """

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.widths = tuple(widths)
        self.sub_mean = MeanShift()
        # Indices follow torchvision's vgg19().features so the state-dict keys match it.
        self.slice1 = nn.Sequential()
        self.slice1.add_module("0", _conv(3, w1))
        self.slice1.add_module("1", nn.ReLU())
        self.slice2 = nn.Sequential()
        self.slice2.add_module("2", _conv(w1, w1))
        self.slice2.add_module("3", nn.ReLU())
        self.slice2.add_module("4", nn.MaxPool2d(2))
        self.slice2.add_module("5", _conv(w1, w2))
        self.slice2.add_module("6", nn.ReLU())
        self.slice3 = nn.Sequential()
        self.slice3.add_module("7", _conv(w2, w2))
        self.slice3.add_module("8", nn.ReLU())
        self.slice3.add_module("9", nn.MaxPool2d(2))
        self.slice3.add_module("10", _conv(w2, w3))
        self.slice3.add_module("11", nn.ReLU())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lv1 = self.slice1(self.sub_mean(x))
        lv2 = self.slice2(lv1)
        lv3 = self.slice3(lv2)
        return lv1, lv2, lv3

    def lv3(self, x: torch.Tensor) -> torch.Tensor:
        """Only the coarsest level: what the query (LR) and key (Ref down-up) sides need."""
        return self.slice3(self.slice2(self.slice1(self.sub_mean(x))))
