"""Running CSNLN on image arrays: exact attention over the whole image, or windows.

CSNLN's attention is global: every position attends to every other one, and the result of
a crop is not the crop of the result.  So the runner does not tile for memory as it does
for TTSR.  ``exact`` runs the whole image, its attention chunked to the budget (exactly the
official unchopped output, in memory linear in the image, in time quadratic);
``windowed`` runs the network on overlapping windows and cross-fades them (time linear in
the image, the attention seeing only its window); ``auto`` stays exact while that costs
less than :data:`AUTO_EXACT_MACS` multiply-adds of attention and fits the budget.

Sizes the official code rejects (odd sides at x2/x4, sides not divisible by 3 at x3) are
mirrored (symmetric padding) at the bottom and right up to the next valid size, run, and
the result cropped to exactly scale x the input.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ttsr_cli.archs.csnln.cost import attention_macs
from ttsr_cli.archs.descriptor import Descriptor
from ttsr_cli.devices import default_memory_budget
from ttsr_cli.errors import TTSRError
from ttsr_cli.pixels import bit_depth, pad_to_multiple, to_image, to_tensor
from ttsr_cli.run.common import Progress, Runner, Upscaled, autocast
from ttsr_cli.tiles import Tile, plan_grid, plan_tiles, ramp

ATTENTIONS = ("exact", "windowed", "auto")
#: ``--attention auto`` stays exact up to this many multiply-adds of attention.
AUTO_EXACT_MACS = 2e12
#: Default window core, and the margin each window reads beyond it, in LR pixels.
WINDOW = 64
WINDOW_MARGIN = 16
#: Feature maps of ``n_feats`` channels at the output resolution alive at the peak of a
#: forward pass (beyond the attention's chunks): calibrated by peak RSS, rounded up.
HR_MAPS = 8
#: Share of the budget the attention's chunks may use, and the bounds on it: below the
#: floor, per-chunk overhead dominates; above the cap, chunks gain no speed.
CHUNK_SHARE = 0.25
CHUNK_FLOOR = 8 << 20
CHUNK_CAP = 256 << 20


class CSNLNRunner(Runner):
    """Runs a CSNLN model (any scale) on images held as arrays.

    ``memory_budget`` (bytes) bounds one image's run (None: half of what is free when it
    starts); ``tile`` forces windows of that many LR pixels a side; ``attention`` is exact,
    windowed or auto.
    """

    def __init__(
        self,
        model: nn.Module,
        descriptor: Descriptor,
        device: torch.device,
        precision: torch.dtype = torch.float32,
        memory_budget: int | None = None,
        tile: int | None = None,
        attention: str = "auto",
    ) -> None:
        if attention not in ATTENTIONS:
            raise TTSRError(f"unknown attention '{attention}' (use exact, windowed or auto)")
        self.model = model.to(device).eval()
        self.descriptor = descriptor
        self.device, self.precision = device, precision
        self.memory_budget, self.tile, self.attention = memory_budget, tile, attention
        self.scale = descriptor.scale
        self.rgb_range = float(descriptor.config.get("rgb_range", 1.0))

    @torch.inference_mode()
    def upscale_detailed(self, lr: np.ndarray, references: object = None) -> Upscaled:
        """x``scale`` super-resolution of ``lr`` (uint8 or uint16 ``[H, W, 3]``)."""
        if references:
            raise TTSRError("CSNLN takes no reference image")
        h, w = lr.shape[:2]
        budget = self.memory_budget or default_memory_budget(self.device)
        mode = self.attention_for(h, w, budget)
        chunk = max(CHUNK_FLOOR, min(CHUNK_CAP, int(budget * CHUNK_SHARE)))
        with autocast(self.device, self.precision):
            if mode == "exact":
                sr, tiles = self._forward(lr, chunk), 1
            else:
                windows = self.windows(h, w, budget)
                sr, tiles = self._windowed(lr, windows, chunk), len(windows)
        return Upscaled(to_image(sr[None], bit_depth(lr), signed=False), tiles, {"attention": mode})

    def attention_for(self, height: int, width: int, budget: int) -> str:
        """The attention one image gets: as asked, or for auto exact while its attention
        costs at most :data:`AUTO_EXACT_MACS` and the whole image fits ``budget``."""
        if self.attention != "auto":
            return self.attention
        cheap = attention_macs(self.descriptor.config, height, width) <= AUTO_EXACT_MACS
        fits = self.peak_bytes(height * width) <= budget
        return "exact" if cheap and fits and self.tile is None else "windowed"

    def peak_bytes(self, lr_pixels: int) -> int:
        """Working memory of an exact run of ``lr_pixels`` LR pixels, beyond the model."""
        elem = torch.finfo(self.precision).bits // 8
        channels = int(self.descriptor.config["n_feats"])
        return lr_pixels * self.scale**2 * channels * elem * HR_MAPS

    def windows(self, height: int, width: int, budget: int) -> list[Tile]:
        """Equal window cores covering the image, each read with a margin: ``tile`` a side
        if forced, else at most :data:`WINDOW` and as large as the budget allows."""
        if self.tile is not None:
            return plan_tiles(height, width, self.tile, WINDOW_MARGIN)
        largest = (WINDOW + 2 * WINDOW_MARGIN) ** 2
        fitting = budget // max(1, self.peak_bytes(1))
        return plan_grid(height, width, max(1, min(largest, fitting)), WINDOW_MARGIN)

    def _windowed(self, lr: np.ndarray, windows: list[Tile], chunk: int) -> torch.Tensor:
        """Each window run alone, its outputs cross-faded with its neighbours' over the
        inner half of the margins (weights summing to one: no seams)."""
        h, w = lr.shape[:2]
        s = self.scale
        total = torch.zeros(3, h * s, w * s)
        progress = Progress(self.device, self.on_tile, len(windows))
        for window in windows:
            ys, xs = window.read
            sr = self._forward(lr[ys, xs], chunk)
            weight = np.outer(
                ramp(window.y, h, WINDOW_MARGIN, s), ramp(window.x, w, WINDOW_MARGIN, s)
            )
            rows, cols = slice(ys.start * s, ys.stop * s), slice(xs.start * s, xs.stop * s)
            total[:, rows, cols] += sr.float().cpu() * torch.from_numpy(weight)
            del sr
            progress.step()
        return total

    def _forward(self, lr: np.ndarray, chunk: int) -> torch.Tensor:
        """``[3, sH, sW]`` output of the network on ``lr``, padded to a valid size first."""
        h, w = lr.shape[:2]
        padded = pad_to_multiple(lr, self.descriptor.size_multiple)
        x = to_tensor(padded, self.device, signed=False)
        if self.rgb_range != 1.0:
            x = x * self.rgb_range
        sr = self.model(x, chunk_bytes=chunk)[0, :, : h * self.scale, : w * self.scale]
        return sr / self.rgb_range if self.rgb_range != 1.0 else sr
