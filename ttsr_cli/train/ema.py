"""An exponential moving average of the weights (``ttsr train --ema DECAY``).

The average of the last few hundred iterates sits nearer the bottom of the loss valley than
any one of them, which the optimiser's noise keeps shaking; SR trainers such as BasicSR's
export it for that reason.  The decay is constant, as theirs: from scratch, the first
``1 / (1 - decay)`` steps are dominated by the initial weights, which a run of many times
that length forgets.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn


class WeightAverage:
    """``average = decay * average + (1 - decay) * weights`` after every step, for every
    floating-point parameter and buffer; integer buffers (BatchNorm's counters) are copied."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight average's decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights in (``model``: the network, not a DDP wrapper)."""
        new = model.state_dict()
        for name, average in self.module.state_dict().items():
            if average.is_floating_point():
                average.lerp_(new[name].to(average.dtype), 1.0 - self.decay)
            else:
                average.copy_(new[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
