"""The Spatial Feature Transform layer: a per-pixel affine map of the features whose scale and
shift are computed from the shared condition features (the segmentation priors).

The two published generators differ here, and both must be reproduced exactly because the
difference is baked into their weights:

* ``pytorch`` (``SFT_Net``, trained in PyTorch, ``SFTGAN_noBN_OST_bg.pth``): the scale and
  shift branches use LeakyReLU 0.1, and the output is ``x * (scale + 1) + shift``, so a zero
  scale means identity;
* ``torch`` (``SFT_Net_torch``, converted from the paper's Lua Torch model,
  ``SFTGAN_torch.pth``): LeakyReLU 0.01 and ``x * scale + shift``.

Swapping either detail moves the torch generator's output by 0.1 to 5.6 (fixture README).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: The two published layouts, by the framework their weights were trained in.
VARIANTS = ("pytorch", "torch")
#: Per variant: the branches' LeakyReLU slope, and what is added to the scale.
_SLOPE = {"pytorch": 0.1, "torch": 0.01}
_SCALE_OFFSET = {"pytorch": 1.0, "torch": 0.0}


class SFTLayer(nn.Module):
    """``x`` modulated by ``cond``: two branches of 1x1 convs (condition width to itself, then
    to the feature width) give a scale and a shift per pixel and channel.  Attribute names
    are the official ones (``SFT_scale_conv0`` ...), so the published weights load unmapped."""

    def __init__(self, variant: str, channels: int, cond_channels: int) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"SFT variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.slope = _SLOPE[variant]
        self.offset = _SCALE_OFFSET[variant]
        self.SFT_scale_conv0 = nn.Conv2d(cond_channels, cond_channels, 1)
        self.SFT_scale_conv1 = nn.Conv2d(cond_channels, channels, 1)
        self.SFT_shift_conv0 = nn.Conv2d(cond_channels, cond_channels, 1)
        self.SFT_shift_conv1 = nn.Conv2d(cond_channels, channels, 1)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale = self.SFT_scale_conv1(F.leaky_relu(self.SFT_scale_conv0(cond), self.slope))
        shift = self.SFT_shift_conv1(F.leaky_relu(self.SFT_shift_conv0(cond), self.slope))
        if self.offset:
            scale.add_(self.offset)  # in place: a fresh map; x * scale + shift, same values
        return (x * scale).add_(shift)
