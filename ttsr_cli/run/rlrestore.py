"""Running RL-Restore on image arrays: the agent chooses, the tools restore, step by step.

Each step the agent looks at the current image's 63x63 views (:mod:`..toolchain`), their
majority picks a tool or stop, and the tool runs on the whole image.  Nothing is clipped or
rounded between steps, as in the authors' code: only the final image is.  The tools are
local (every output pixel depends on the input within ``reach`` pixels), so a tool runs in
tiles whose margins are at least that reach, which gives exactly the untiled image in
memory bounded by the budget; the agent always runs in fp32 (its choices are the result).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ttsr_cli.archs.descriptor import Descriptor
from ttsr_cli.archs.rlrestore.toolchain import views, vote
from ttsr_cli.devices import default_memory_budget
from ttsr_cli.errors import TTSRError
from ttsr_cli.pixels import bit_depth, to_image, to_tensor
from ttsr_cli.run.common import Progress, Runner, Upscaled, autocast, budget_warning, stitch
from ttsr_cli.tiles import MIN_TILE, Tile, plan_grid, plan_tiles

#: Bytes per pixel of a tool's pass at fp32: the 8-layer tool's widest moment holds two
#: 64-channel maps and two 32-channel ones.  Peak RSS grew by about 650 bytes per pixel from
#: 0.25 to 1 MP in a chain of 8-layer tools (3-layer: 310; bench_restore.py); with headroom.
TOOL_PIXEL_BYTES = 800
#: Bytes per pixel of the whole-image float canvases (current image and the next).
CANVAS_PIXEL_BYTES = 24


class RLRestoreRunner(Runner):
    """Restores images held as arrays (uint8 or uint16 ``[H, W, 3]``, same type out).

    ``memory_budget`` (bytes) bounds one image's run (None: half of what is free when it
    starts); ``tile`` forces tool tiles of that many pixels a side; ``max_steps`` caps the
    chain (None: the model's own, the paper's 3); ``keep_steps`` keeps each step's image;
    ``channels_last`` runs the convolutions in NHWC (the model is converted in place).
    """

    def __init__(
        self,
        model: nn.Module,
        descriptor: Descriptor,
        device: torch.device,
        precision: torch.dtype = torch.float32,
        memory_budget: int | None = None,
        tile: int | None = None,
        max_steps: int | None = None,
        keep_steps: bool = False,
        channels_last: bool = True,
    ) -> None:
        if max_steps is not None and max_steps < 1:
            raise TTSRError(f"--max-steps {max_steps}: must be at least 1")
        # NHWC convolutions are faster on CPUs (tests/benchmarks/bench_restore.py).
        self.channels_last = channels_last
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.layout).eval()
        self.descriptor = descriptor
        self.device, self.precision = device, precision
        self.memory_budget, self.tile = memory_budget, tile
        self.max_steps = max_steps or int(descriptor.config["max_steps"])
        self.keep_steps = keep_steps

    @torch.inference_mode()
    def upscale_detailed(self, lr: np.ndarray, references: object = None) -> Upscaled:
        """The restored ``lr`` with the chain that restored it: ``mode["tools"]`` the 1-based
        tools in the order applied (stop not listed), ``mode["votes"]`` each step's votes
        (one count per tool, then stop)."""
        if references:
            raise TTSRError("RL-Restore takes no reference image")
        depth = bit_depth(lr)
        image = to_tensor(lr, self.device, signed=False).contiguous(memory_format=self.layout)
        stop = self.model.agent.stop
        seen = views(image)
        state = self.model.agent.initial_state(seen)
        tools: list[int] = []
        votes: list[list[int]] = []
        steps: list[np.ndarray] = []
        tiles = 1
        warnings = self.budget_warnings(*image.shape[-2:])
        for _ in range(self.max_steps):
            q, state = self.model.agent(seen, state)
            action, counts = vote(q)
            votes.append(counts)
            if action == stop:
                break
            image, tiles = self.apply_tool(action, image)
            tools.append(action + 1)
            if self.keep_steps:
                steps.append(to_image(image, depth, signed=False))
            seen = views(image)
            state = state.after(torch.full((len(seen),), action, device=self.device))
        mode = {"tools": tools, "votes": votes}
        sr = to_image(image, depth, signed=False)
        return Upscaled(sr, tiles, mode, warnings=warnings, steps=steps)

    def apply_tool(self, action: int, image: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Tool ``action`` on the whole ``image``, in tiles when it does not fit the budget;
        the result and the number of tiles."""
        h, w = image.shape[-2:]
        tiles = self.tiles(h, w)
        tool = self.model.tools[action]
        if len(tiles) == 1:
            with autocast(self.device, self.precision):
                return tool(image).float(), 1

        def restore(tile: Tile) -> torch.Tensor:
            with autocast(self.device, self.precision):
                return tool(image[(..., *tile.read)]).float()

        progress = Progress(self.device, self.on_tile, len(tiles))
        return stitch(torch.empty_like(image), tiles, restore, progress), len(tiles)

    def budget_warnings(self, height: int, width: int) -> list[str]:
        """The shortfall of ``--max-memory`` when even the smallest tiles do not fit it (they
        run anyway, as TTSR's do), said once per image."""
        if self.tile is not None or self.memory_budget is None:
            return []
        side = MIN_TILE + 2 * self.descriptor.tiling.reach
        need = height * width * CANVAS_PIXEL_BYTES + side * side * self._pixel_bytes()
        return [budget_warning(need - self.memory_budget)] if need > self.memory_budget else []

    def _pixel_bytes(self) -> int:
        """A tool pass's bytes per pixel at the run's precision."""
        return TOOL_PIXEL_BYTES * (torch.finfo(self.precision).bits // 8) // 4

    def tiles(self, height: int, width: int) -> list[Tile]:
        """Tool tiles within the budget, each reading the tools' reach beyond its core."""
        reach = self.descriptor.tiling.reach
        if self.tile is not None:
            return plan_tiles(height, width, self.tile, reach)
        budget = self.memory_budget or default_memory_budget(self.device)
        spare = budget - height * width * CANVAS_PIXEL_BYTES
        return plan_grid(height, width, max(1, spare // self._pixel_bytes()), reach)
