"""The self-exemplar mining (SEM) cell of CSNLN: mutual-projected fusion and recurrent
back-projection.

Attribute names follow the official modules (``MultisourceProjection`` is
:class:`MutualProjectedFusion`, ``RecurrentProjection`` is :class:`SEMCell`), so their
checkpoints load with no key mapping.  Sums are written ``a.add_(b)`` on a fresh result instead
of ``b + a``: float addition is commutative, so the numbers are the same, and no third map of
the largest size is allocated.
"""

from __future__ import annotations

import torch
from torch import nn

from ttsr_cli.archs.csnln.attention import CrossScaleAttention, InScaleAttention, conv_prelu

#: Per network scale: (kernel, stride, padding) of the strided convolutions that move between
#: resolutions in one projection.  x4 runs two x2 projections, so it shares x2's entries.
PROJECTION = {2: (6, 2, 2), 3: (9, 3, 3), 4: (6, 2, 2)}
#: x4 only: the layers jumping straight between LR and x4 resolution.
X4_PROJECTION = (8, 4, 2)


class ResidualBlock(nn.Module):
    """conv, PReLU, conv, plus the input (the official ``ResBlock`` with ``res_scale`` 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.PReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).add_(x)


class MutualProjectedFusion(nn.Module):
    """Fuses the cross-scale attention's upscaled map with the in-scale attention's map
    (upscaled by a transposed convolution): their difference, encoded by a residual block,
    corrects the in-scale branch, so each branch projects what the other lacks."""

    def __init__(self, channels: int, reduction: int, scale: int) -> None:
        super().__init__()
        kernel, stride, padding = PROJECTION[scale]
        self.up_attention = CrossScaleAttention(channels, reduction, stride)
        self.down_attention = InScaleAttention(channels, reduction)
        self.upsample = conv_prelu(channels, channels, kernel, stride, padding, transpose=True)
        self.encoder = ResidualBlock(channels)

    def forward(self, x: torch.Tensor, chunk_bytes: int | None = None) -> torch.Tensor:
        down_map = self.upsample(self.down_attention(x, chunk_bytes))
        diff = self.up_attention(x, chunk_bytes).sub_(down_map)
        err = self.encoder(diff)
        del diff
        return err.add_(down_map)


class SEMCell(nn.Module):
    """One recurrence of the self-exemplar mining cell, shared by all iterations.

    Recurrent back-projection: the fused HR estimate is projected back down, its disagreement
    with the cell's LR input is projected up again and added (x4 does it twice, through an x2
    intermediate).  Returns the next LR features and this iteration's HR features.
    """

    def __init__(self, channels: int, reduction: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        kernel, stride, padding = PROJECTION[scale]
        self.multi_source_projection = MutualProjectedFusion(channels, reduction, scale)
        self.down_sample_1 = conv_prelu(channels, channels, kernel, stride, padding)
        if scale != 4:
            self.down_sample_2 = conv_prelu(channels, channels, kernel, stride, padding)
        self.error_encode = conv_prelu(channels, channels, kernel, stride, padding, transpose=True)
        self.post_conv = conv_prelu(channels, channels, 3)
        if scale == 4:
            kernel, stride, padding = X4_PROJECTION
            self.multi_source_projection_2 = MutualProjectedFusion(channels, reduction, scale)
            self.down_sample_3 = conv_prelu(channels, channels, kernel, stride, padding)
            self.down_sample_4 = conv_prelu(channels, channels, kernel, stride, padding)
            self.error_encode_2 = conv_prelu(
                channels, channels, kernel, stride, padding, transpose=True
            )

    def forward(
        self, x: torch.Tensor, chunk_bytes: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        up = self.multi_source_projection(x, chunk_bytes)
        estimate = self.error_encode(x - self.down_sample_1(up)).add_(up)
        del up
        if self.scale != 4:
            return self.post_conv(self.down_sample_2(estimate)), estimate
        up = self.multi_source_projection_2(estimate, chunk_bytes)
        del estimate
        estimate = self.error_encode_2(x - self.down_sample_3(up)).add_(up)
        del up
        return self.post_conv(self.down_sample_4(estimate)), estimate
