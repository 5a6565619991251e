"""The condition network: segmentation probabilities at the output size in, one set of
condition features at the LR size out, shared by every SFT layer of the generator.

It takes the probability maps exactly as the segmentation network gives them (softmax over
the classes, at 4x the LR size): the official test code feeds them unchanged, with no
resizing, renormalisation or masking of the background class, and so must a runner.
"""

from __future__ import annotations

from torch import nn

#: The official condition network's hidden 1x1 layers between its first and last conv.
HIDDEN_LAYERS = 3
#: Slope of every LeakyReLU in it, in both published variants.
SLOPE = 0.1


def condition_network(classes: int, hidden: int, out_channels: int, scale: int) -> nn.Sequential:
    """A ``scale x scale`` conv with stride ``scale`` (output size to LR size, one vector per
    LR pixel), then 1x1 convs, LeakyReLU between them and none at the end.  A ``Sequential``
    because the published weights are keyed ``CondNet.0`` ... ``CondNet.8``."""
    layers: list[nn.Module] = [nn.Conv2d(classes, hidden, scale, stride=scale)]
    for _ in range(HIDDEN_LAYERS):
        layers += [nn.LeakyReLU(SLOPE, inplace=True), nn.Conv2d(hidden, hidden, 1)]
    layers += [nn.LeakyReLU(SLOPE, inplace=True), nn.Conv2d(hidden, out_channels, 1)]
    return nn.Sequential(*layers)
