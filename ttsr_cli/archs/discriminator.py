"""The original TTSR critic for WGAN-GP: ten 3x3 convs with LeakyReLU(0.2), every second one
stride 2, then two linear layers.  Input: HR-sized patches of ``patch_size`` pixels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = (32, 32, 64, 64, 128, 128, 256, 256, 512, 512)


class Discriminator(nn.Module):
    def __init__(self, patch_size: int = 160) -> None:
        super().__init__()
        c_in = 3
        side = patch_size
        for i, c_out in enumerate(CHANNELS, start=1):
            stride = 2 if i % 2 == 0 else 1
            self.add_module(f"conv{i}", nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1))
            side = (side - 1) // stride + 1
            c_in = c_out
        self.fc1 = nn.Linear(side * side * CHANNELS[-1], 1024)
        self.fc2 = nn.Linear(1024, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, len(CHANNELS) + 1):
            x = F.leaky_relu(getattr(self, f"conv{i}")(x), 0.2)
        x = F.leaky_relu(self.fc1(x.flatten(1)), 0.2)
        return self.fc2(x)
