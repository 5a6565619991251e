"""VGG19 ``features`` up to relu5_1, for the perceptual loss and for initialising the LTE.

ImageNet weights are not shipped; :func:`ttsr_cli.vgg_weights` fetches them.  Layer indices
follow torchvision's ``vgg19().features`` so published VGG19 state dicts load by key.
"""

from __future__ import annotations

import torch
from torch import nn

from ttsr_cli.archs.blocks import IMAGENET_MEAN, IMAGENET_STD, MeanShift

#: VGG19 configuration "E": channels per conv, "M" for max-pooling.
_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
RELU5_1 = 30  # features[:30] ends with relu5_1


class VGG19Relu5(nn.Module):
    """Frozen feature extractor: image in [0, 1] -> VGG19 relu5_1 features."""

    def __init__(self) -> None:
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
        self.features = nn.Sequential(*layers[:RELU5_1])
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.sub_mean(x))
