"""OutdoorSceneSeg: the segmentation network whose class probabilities are SFT-GAN's priors.

A dilated ResNet-101 (output stride 8: the last two stages dilate instead of down-sampling),
a 3x3 head and a 1x1 classifier give class logits at 1/8 of the input size; a grouped
transposed convolution (one 16x16 kernel per class, stride 8) brings them back to the input
size and a softmax over the classes makes the probabilities.  Module indices are the official
flattened ``feature`` Sequential's (``feature.0`` ... ``feature.47``), so
``segmentation_OST_bic.pth`` loads unmapped.

What it is fed (BGR, 0..255 minus the Caffe means, at 4x the LR size) is the runner's
business; the network takes that tensor as it is.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: The official class order (the index of each channel of the output).
CLASSES = ("background", "sky", "water", "grass", "mountain", "building", "plant", "animal")
#: The input side divided by the logits' side; the output is ``STRIDE * ceil(side / STRIDE)``.
STRIDE = 8
#: ResNet-101's stages after the stem: (blocks, bottleneck width, output width, stride of the
#: first block, dilation).  conv4 and conv5 dilate by 2 and 4 to keep the output stride 8.
STAGES = ((3, 64, 256, 1, 1), (4, 128, 512, 2, 1), (23, 256, 1024, 1, 2), (3, 512, 2048, 1, 4))
#: Width of the stem's output and of the head before the classifier.
STEM_WIDTH = 128
HEAD_WIDTH = 512


def conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1
) -> list[nn.Module]:
    """A bias-free conv and its BatchNorm (the checkpoint's ``.N`` and ``.N+1``)."""
    pad = dilation * (kernel - 1) // 2
    conv = nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


class Bottleneck(nn.Module):
    """The official ``Res131``: 1x1 reduce, 3x3 (the stage's stride and dilation), 1x1 expand,
    each with BatchNorm, ReLU after the first two; added to the input, or to its 1x1
    projection (``proj``) where the width changes, then ReLU."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.res = nn.Sequential(
            *conv_bn(cin, mid, 1),
            nn.ReLU(inplace=True),
            *conv_bn(mid, mid, 3, stride, dilation),
            nn.ReLU(inplace=True),
            *conv_bn(mid, cout, 1),
        )
        self.proj = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.proj is None else self.proj(x)
        # In place: the same values, without allocating and faulting in a fresh map for the
        # sum and for the ReLU (at conv4's 1024 channels these passes cost as much as a conv).
        out = self.res(x)
        out += skip
        return out.relu_()


def _stem() -> list[nn.Module]:
    """Three 3x3 conv-BN-ReLU (the first with stride 2) and a ceil-mode 3x3 max-pool."""
    layers: list[nn.Module] = []
    for cin, cout, stride in ((3, 64, 2), (64, 64, 1), (64, STEM_WIDTH, 1)):
        layers += [*conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True)]
    return [*layers, nn.MaxPool2d(3, 2, ceil_mode=True)]


def _stages() -> list[nn.Module]:
    blocks: list[nn.Module] = []
    cin = STEM_WIDTH
    for count, mid, cout, stride, dilation in STAGES:
        for i in range(count):
            blocks.append(Bottleneck(cin, mid, cout, stride if i == 0 else 1, dilation))
            cin = cout
    return blocks


class OutdoorSceneSeg(nn.Module):
    """``forward(x)``: BGR mean-subtracted ``[N, 3, H, W]`` to class probabilities
    ``[N, 8, 8 * ceil(H / 8), 8 * ceil(W / 8)]``; :meth:`logits` gives the 1/8-size logits.
    The official Dropout before the classifier is inert at inference and is an identity here
    (it only keeps the classifier at ``feature.47``)."""

    def __init__(self) -> None:
        super().__init__()
        classes = len(CLASSES)
        head = [*conv_bn(STAGES[-1][2], HEAD_WIDTH, 3), nn.ReLU(inplace=True), nn.Identity()]
        classifier = nn.Conv2d(HEAD_WIDTH, classes, 1)
        self.feature = nn.Sequential(*_stem(), *_stages(), *head, classifier)
        self.deconv = nn.ConvTranspose2d(
            classes, classes, 2 * STRIDE, STRIDE, STRIDE // 2, groups=classes, bias=False
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits at 1/8 of the input size (before the transposed convolution)."""
        return self.feature(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.deconv(self.logits(x)), dim=1)
