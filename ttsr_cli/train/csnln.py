"""Training CSNLN with the official recipe: L1 loss, Adam (0.9, 0.999, eps 1e-8) at 1e-4,
LR patches of 48x48 (HR ``48 x scale``), 16 per batch, flips and transposes; the learning
rate halves every ``--lr-decay-steps`` (the official: every 200 epochs of 1000 batches).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ttsr_cli.archs.csnln.load import FAMILY
from ttsr_cli.archs.csnln.model import CSNLNConfig
from ttsr_cli.errors import TTSRError
from ttsr_cli.train.patches import PatchDataset
from ttsr_cli.train.recipe import Recipe, Terms

#: Widths and SEM iterations; the scale comes from ``--scale``.  ``lite`` is narrow and
#: shallow enough for a CPU (the official attention hard-codes 128 channels; ours takes any).
CONFIGS = {
    "tiny": {"n_feats": 8, "depth": 2},
    "lite": {"n_feats": 32, "depth": 4},
    "paper": {"n_feats": 128, "depth": 12},
}
#: The official LR patch side.
LR_PATCH = 48


def checked(config: Mapping[str, Any]) -> dict[str, Any]:
    """A CSNLN configuration from a file (any scale: ``--scale`` sets it), valid or one line."""
    fields = {"scale": 4, **config}
    try:
        CSNLNConfig.from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise TTSRError(f"invalid CSNLN configuration ({exc})") from None
    return dict(config)


class CSNLNRecipe(Recipe):
    """The official CSNLN training (``--arch csnln``)."""

    arch = "csnln"
    protocol = "sisr"
    default_batch = 16

    def __init__(self, opts: Any) -> None:
        super().__init__(opts)
        if opts.scale not in (2, 3, 4):
            raise TTSRError(f"--scale {opts.scale}: CSNLN is built for x2, x3 and x4")
        if opts.preset != "rec" or opts.match_loss:
            raise TTSRError("--preset and --match-loss are TTSR's; CSNLN trains with L1")
        self.default_patch = LR_PATCH * opts.scale

    def create(self) -> nn.Module:
        return FAMILY.create({**self.opts.config, "scale": self.opts.scale})[0]

    def dataset(self) -> torch.utils.data.Dataset:
        return PatchDataset(self.opts.data, self.opts.patch_size, self.opts.scale, self.opts.seed)

    def terms(self, trainer: Any, batch: Mapping[str, torch.Tensor]) -> Terms:
        with trainer.autocast():
            sr = trainer.net(batch["lr"])
            rec = F.l1_loss(sr.float(), batch["hr"])
        return {"rec": rec}, {}, {"rec": 1.0}
