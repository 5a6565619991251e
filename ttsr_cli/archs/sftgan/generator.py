"""The SFT-GAN generator (Wang et al., "Recovering Realistic Texture in Image Super-Resolution
by Deep Spatial Feature Transform", CVPR 2018): x4 super-resolution whose features are
modulated, in every residual block, by affine maps computed from segmentation priors.

Layout, with the official attribute names so the published weights load unmapped:
``conv0`` (RGB to features), ``sft_branch`` (``num_blocks`` residual blocks with two SFT
layers each, a last SFT layer and a 3x3 conv; added to ``conv0``'s output), ``HR_branch``
(two x2 up-samplings, a conv, the RGB conv; no activation at the end, so nothing is clamped)
and ``CondNet`` (:mod:`.condition`).  The two published variants (:mod:`.sft`) also differ in
the residual block's order and in the up-sampling: the PyTorch one convolves to four times the
channels then shuffles pixels (``HR_branch.0/3``), the Torch one repeats pixels (nearest) then
convolves (``HR_branch.1/4``); those keys tell the variants apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ttsr_cli.archs.sftgan.condition import condition_network
from ttsr_cli.archs.sftgan.sft import VARIANTS, SFTLayer

#: The generator's only scale: two x2 stages, and the condition network's stride.
SCALE = 4


@dataclass(frozen=True)
class SFTGANConfig:
    """``variant``: ``pytorch`` or ``torch`` (:mod:`.sft`); ``channels``: feature width;
    ``cond_channels``: the condition features' width (also the SFT branches' hidden width);
    ``cond_hidden``: the condition network's width; ``classes``: segmentation classes taken.
    The defaults are both published files'."""

    variant: str = "pytorch"
    num_blocks: int = 16
    channels: int = 64
    cond_channels: int = 32
    cond_hidden: int = 128
    classes: int = 8

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"SFT-GAN variant must be one of {', '.join(VARIANTS)}")
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SFT-GAN {f.name} must be a positive integer, got {value!r}")

    @property
    def reach(self) -> int:
        """LR pixels an output pixel depends on beyond its own: one per 3x3 conv at LR size
        (``conv0``, two per block, the trunk's last, and the PyTorch layout's first
        up-sampling conv), half one per conv at 2x, a quarter one per conv at 4x: 2b + 4 for
        the PyTorch layout, 2b + 3.25 rounded up for the Torch one.  The condition is per LR
        pixel (a stride-4 conv, then 1x1 convs), so it reaches as far, in LR pixels."""
        return 2 * self.num_blocks + 4

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as stored in safetensors metadata."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SFTGANConfig:
        """Inverse of :meth:`to_dict`; unknown fields are an error, not silently dropped."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown SFT-GAN config fields: {', '.join(unknown)}")
        return cls(**data)


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class ResBlockSFT(nn.Module):
    """``x + conv1(...(conv0(...(x))))`` with an SFT layer before each conv.  Where the ReLU
    sits is the variant's: after ``conv0`` (PyTorch), or after each SFT layer (Torch)."""

    def __init__(self, variant: str, channels: int, cond_channels: int) -> None:
        super().__init__()
        self.torch_order = variant == "torch"
        self.sft0 = SFTLayer(variant, channels, cond_channels)
        self.conv0 = _conv3(channels, channels)
        self.sft1 = SFTLayer(variant, channels, cond_channels)
        self.conv1 = _conv3(channels, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # In place where the operand is a fresh map nothing else reads: the same values.
        if self.torch_order:
            h = self.conv0(self.sft0(x, cond).relu_())
            h = self.sft1(h, cond).relu_()
        else:
            h = self.sft1(self.conv0(self.sft0(x, cond)).relu_(), cond)
        return self.conv1(h).add_(x)


def _upsampling(variant: str, channels: int) -> nn.Sequential:
    """``HR_branch``: indices fixed by the published keys (0/3 or 1/4, then 6 and 8)."""
    stages: list[nn.Module] = []
    for _ in range(2):
        if variant == "torch":
            stages += [nn.Upsample(scale_factor=2, mode="nearest"), _conv3(channels, channels)]
        else:
            stages += [_conv3(channels, 4 * channels), nn.PixelShuffle(2)]
        stages.append(nn.ReLU(inplace=True))
    stages += [_conv3(channels, channels), nn.ReLU(inplace=True), _conv3(channels, 3)]
    return nn.Sequential(*stages)


class SFTGAN(nn.Module):
    """The generator: ``forward(lr, cond)`` with ``lr`` RGB ``[N, 3, H, W]`` in [0, 1] and
    ``cond`` the segmentation probabilities ``[N, classes, 4H, 4W]``; returns RGB
    ``[N, 3, 4H, 4W]``, unclamped (the official code clamps only when writing 8-bit)."""

    def __init__(self, config: SFTGANConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or SFTGANConfig()
        self.conv0 = _conv3(3, c.channels)
        blocks: list[nn.Module] = [
            ResBlockSFT(c.variant, c.channels, c.cond_channels) for _ in range(c.num_blocks)
        ]
        blocks += [SFTLayer(c.variant, c.channels, c.cond_channels), _conv3(c.channels, c.channels)]
        self.sft_branch = nn.ModuleList(blocks)  # keyed as the official Sequential
        self.HR_branch = _upsampling(c.variant, c.channels)
        self.CondNet = condition_network(c.classes, c.cond_hidden, c.cond_channels, SCALE)

    def forward(self, lr: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self._check_inputs(lr, cond)
        shared = self.CondNet(cond)
        fea = self.conv0(lr)
        h = fea
        for block in self.sft_branch[:-2]:
            h = block(h, shared)
        h = self.sft_branch[-1](self.sft_branch[-2](h, shared))
        return self.HR_branch(fea + h)

    def _check_inputs(self, lr: torch.Tensor, cond: torch.Tensor) -> None:
        """Refuse up front what the official code fails on deep inside (a condition whose
        size is not exactly 4x the LR's: features and condition would disagree)."""
        classes = self.config.classes
        if lr.dim() != 4 or lr.shape[1] != 3:
            raise ValueError(f"SFT-GAN takes an RGB [N, 3, H, W] LR, got {list(lr.shape)}")
        n, _, h, w = lr.shape
        expected = [n, classes, SCALE * h, SCALE * w]
        if list(cond.shape) != expected:
            raise ValueError(
                f"SFT-GAN needs priors of shape {expected} for an LR of {h}x{w}, "
                f"got {list(cond.shape)}"
            )
