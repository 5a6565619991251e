"""VGG19 ``features`` up to a chosen layer, for the perceptual losses and for initialising
TTSR's LTE: TTSR compares relu5_1 features, SFT-GAN conv5_4's (before its ReLU, as the
authors' training code did).

ImageNet weights are not shipped; :func:`ttsr_cli.vgg_weights` fetches them.  Layer indices
follow torchvision's ``vgg19().features`` so published VGG19 state dicts load by key.
"""

from __future__ import annotations

import torch
from torch import nn

from ttsr_cli.archs.blocks import IMAGENET_MEAN, IMAGENET_STD, MeanShift

#: VGG19 configuration "E": channels per conv, "M" for max-pooling (the last pool dropped).
_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M")
_LAYOUT = (*_LAYOUT, 512, 512, 512, 512)
RELU5_1 = 30  # features[:30] ends with relu5_1
CONV5_4 = 35  # features[:35] ends with conv5_4, before its ReLU


class VGG19Features(nn.Module):
    """Frozen feature extractor: image in [0, 1] -> VGG19 ``features[:end]``."""

    def __init__(self, end: int = RELU5_1) -> None:
        super().__init__()
        self.sub_mean = MeanShift(IMAGENET_MEAN, IMAGENET_STD)
        layers: list[nn.Module] = []
        c_in = 3
        for item in _LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c_in, int(item), 3, padding=1), nn.ReLU(inplace=True)]
                c_in = int(item)
        self.features = nn.Sequential(*layers[:end])
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.sub_mean(x))
