"""The toolbox's two networks: small residual CNNs, each trained for one band of one
distortion (blur, noise or JPEG), that map a damaged image to a less damaged one.

Both keep the image size (stride 1, zero "SAME" padding, ``k // 2`` a side), add their
output to their input (a global residual) and end without an activation: nothing is
clipped, because the next tool and the agent see the unclipped result, as in the paper's
chain.  Layer names are the TensorFlow variable scopes of the authors' checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _conv(cin: int, cout: int, kernel: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2)


class ShallowTool(nn.Module):
    """The 3-layer tool (21,827 parameters): 9x9 3->32, 5x5 32->16, 5x5 16->3, ReLU between."""

    #: Pixels beyond a tile's core that its output depends on (4 + 2 + 2).
    reach = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv(3, 32, 9)
        self.conv2 = _conv(32, 16, 5)
        self.conv3 = _conv(16, 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return x + self.conv3(h)


class ResidualTool(nn.Module):
    """The 8-layer tool (50,851 parameters): a 5x5 64-channel head, a 1x1 bottleneck to 32
    whose output is a skip path (no ReLU on it), two residual units of two 3x3 convs, a 1x1
    expansion back to 64 and a 5x5 tail to RGB."""

    #: 2 (conv1) + 4 x 1 (the 3x3 convs) + 2 (conv3).
    reach = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = _conv(3, 64, 5)
        self.conv1_2 = _conv(64, 32, 1)
        self.conv2 = _conv(32, 32, 3)
        self.conv2a = _conv(32, 32, 3)
        self.conv2c = _conv(32, 32, 3)
        self.conv2d = _conv(32, 32, 3)
        self.conv2_2 = _conv(32, 64, 1)
        self.conv3 = _conv(64, 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv1_2(F.relu(self.conv1(x)))
        s = s + self.conv2a(F.relu(self.conv2(F.relu(s))))
        s = s + self.conv2d(F.relu(self.conv2c(F.relu(s))))
        return x + self.conv3(F.relu(self.conv2_2(s)))


#: Tool kinds by the name configurations use.
TOOL_KINDS: dict[str, type[nn.Module]] = {"3-layer": ShallowTool, "8-layer": ResidualTool}
