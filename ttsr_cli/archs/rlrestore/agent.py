"""The agent: a small CNN that looks at a 63x63 view of the current image, an LSTM that
remembers the steps taken, and Q-values for every tool plus stop.

Three details decide whether the authors' weights give their choices (each, done the
PyTorch way, changes most chains; the fixture README measures how many):

* the stride-2 convolutions pad as TensorFlow's ``SAME`` does, more after than before
  when the total is odd (``padding=k//2`` is not the same);
* the feature map is flattened in TensorFlow's NHWC order before the dense layer;
* the LSTM is TensorFlow's ``BasicLSTMCell``: gates in the order i, j, f, o, and a forget
  bias of 1.0 added at run time (it is not in the checkpoint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

#: Side of the views the agent sees (its dense layer's width is fixed by it).
VIEW = 63
#: Channels of the four convolutions and their kernels.
CONV_CHANNELS = (32, 24, 24, 24)
CONV_KERNELS = (9, 5, 5, 5)
#: Width of the dense layer between the convolutions and the LSTM.
FEATURES = 32
#: ``BasicLSTMCell``'s forget bias, added to the f gate at run time.
FORGET_BIAS = 1.0


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME``: ``ceil(size / stride)`` outputs, the padding they need split
    with the smaller half before (63 -> 32 with a 9x9 kernel pads 4 and 4; 32 -> 16 with
    5x5 pads 1 before and 2 after)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv(nn.Conv2d):
    """A stride-2 convolution padded as TensorFlow pads it."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__(cin, cout, kernel, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        top, bottom = same_padding(x.shape[-2], k, 2)
        left, right = same_padding(x.shape[-1], k, 2)
        return super().forward(F.pad(x, (left, right, top, bottom)))


class TFLSTMCell(nn.Module):
    """TensorFlow's ``BasicLSTMCell`` step: ``z = [x, h] W^T + b`` split i, j, f, o;
    ``c = c * sigmoid(f + 1) + sigmoid(i) * tanh(j)``; ``h = sigmoid(o) * tanh(c)``.
    ``weight`` is the checkpoint's kernel transposed, ``[4 * units, inputs + units]``."""

    def __init__(self, inputs: int, units: int) -> None:
        super().__init__()
        self.units = units
        bound = 1 / math.sqrt(units)
        self.weight = nn.Parameter(torch.empty(4 * units, inputs + units).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(4 * units))

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        z = F.linear(torch.cat([x, h], dim=1), self.weight, self.bias)
        i, j, f, o = z.chunk(4, dim=1)
        c = c * torch.sigmoid(f + FORGET_BIAS) + torch.sigmoid(i) * torch.tanh(j)
        return torch.sigmoid(o) * torch.tanh(c), c


@dataclass
class AgentState:
    """The LSTM's hidden and cell state, one row per view (each view remembers its own
    steps), and the action each view's image took last (``[N]`` indices; None before the
    first step)."""

    h: torch.Tensor
    c: torch.Tensor
    previous: torch.Tensor | None = None

    def after(self, actions: torch.Tensor) -> AgentState:
        """The state with ``actions`` (``[N]``) as the last ones taken."""
        return AgentState(self.h, self.c, actions)


class Agent(nn.Module):
    """Q-values of ``tools`` tools and stop (the last index) for a batch of 63x63 views."""

    def __init__(self, tools: int, units: int = 50) -> None:
        super().__init__()
        self.tools = tools
        channels = (3, *CONV_CHANNELS)
        for n, kernel in enumerate(CONV_KERNELS):
            self.add_module(f"l{n + 1}", SameConv(channels[n], channels[n + 1], kernel))
        side = VIEW
        for _ in CONV_KERNELS:
            side = math.ceil(side / 2)
        self.l7 = nn.Linear(side * side * CONV_CHANNELS[-1], FEATURES)
        self.lstm = TFLSTMCell(FEATURES + tools, units)
        self.q = nn.Linear(units, tools + 1)

    @property
    def stop(self) -> int:
        """The action index of stop."""
        return self.tools

    def initial_state(self, views: torch.Tensor) -> AgentState:
        """Zero LSTM state for ``views`` (``[N, 3, 63, 63]``), as every episode starts."""
        zeros = views.new_zeros(views.shape[0], self.lstm.units)
        return AgentState(zeros, zeros.clone())

    def forward(self, views: torch.Tensor, state: AgentState) -> tuple[torch.Tensor, AgentState]:
        """One step: ``[N, tools + 1]`` Q-values and the state after it.  The previous
        action enters as a one-hot over the tools (stop, and the first step, as zeros)."""
        h = views
        for layer in (self.l1, self.l2, self.l3, self.l4):
            h = F.relu(layer(h))
        h = F.relu(self.l7(h.permute(0, 2, 3, 1).flatten(1)))  # NHWC order, as TF flattens
        if state.previous is None:
            previous = h.new_zeros(h.shape[0], self.tools)
        else:  # stop has no slot
            previous = F.one_hot(state.previous, self.tools + 1)[:, : self.tools].to(h.dtype)
        hidden, cell = self.lstm(torch.cat([h, previous], dim=1), (state.h, state.c))
        return self.q(hidden), AgentState(hidden, cell, state.previous)
