"""The auxiliary classifier discriminator (ACD) that SFT-GAN is trained against: a VGG-style
stack of convs whose features feed two heads, one telling real from generated patches (the
GAN head) and one telling which of the 8 outdoor classes a patch shows (the class head).  The
class head makes the discriminator judge texture per category, so the generator is pushed to
make grass look like grass, not like generic detail.

Layout of the authors' ``ACD_VGG_BN_96``: eight convs alternating 3x3 stride 1 and 4x4
stride 2 (64, 64, 128, 128, 256, 256, 512, 512 channels), BatchNorm after all but the first,
LeakyReLU 0.1 after each; each head is a 100-unit dense layer, LeakyReLU 0.1, then its
output.  The dense layers take the features of a ``patch / 16`` square (6x6 at the official
96-pixel patches), so the patch side must be a multiple of 16.
"""

from __future__ import annotations

import torch
from torch import nn

#: Output channels of the eight convs; the odd-numbered ones (2nd, 4th ...) stride 2.
CHANNELS = (64, 64, 128, 128, 256, 256, 512, 512)
#: The patch side over the features' side (four stride-2 convs).
STRIDE = 16
HEAD_WIDTH = 100
SLOPE = 0.1


def _head(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, HEAD_WIDTH), nn.LeakyReLU(SLOPE), nn.Linear(HEAD_WIDTH, outputs)
    )


class ACD(nn.Module):
    """``forward(x)``: RGB patches ``[N, 3, P, P]`` in [0, 1] -> (GAN logit ``[N, 1]``,
    class logits ``[N, classes]``)."""

    def __init__(self, patch_size: int = 96, classes: int = 8) -> None:
        super().__init__()
        if patch_size % STRIDE or patch_size < STRIDE:
            raise ValueError(f"the ACD takes patches whose side is a multiple of {STRIDE}")
        layers: list[nn.Module] = []
        c_in = 3
        for i, c_out in enumerate(CHANNELS):
            stride = 2 if i % 2 else 1
            layers.append(nn.Conv2d(c_in, c_out, 4 if stride == 2 else 3, stride, 1))
            if i:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(SLOPE))
            c_in = c_out
        self.feature = nn.Sequential(*layers)
        flat = CHANNELS[-1] * (patch_size // STRIDE) ** 2
        self.gan = _head(flat, 1)
        self.cls = _head(flat, classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.feature(x).flatten(1)
        return self.gan(features), self.cls(features)
