"""Running SFT-GAN on image arrays: the segmentation network makes the priors, the generator
upscales x4 under them.

The official pipeline, from an LR image: OutdoorSceneSeg sees the LR up-sampled x4 with
MATLAB's bicubic (:mod:`ttsr_cli.imresize`), in BGR, on the 0..255 scale, less the Caffe
means; its 8 class probabilities, at the output size and unnormalised, are the generator's
condition; the generator sees the LR in RGB on [0, 1].  An LR with an odd side, which the
official code cannot run (the segmentation's size would not be 4x the LR's), is mirrored at
the bottom and right to even sides, run, and the result cropped to exactly 4x the input.

**Memory.**  Each network runs whole when the budget holds it, else in tiles.  The generator
is local (:attr:`Descriptor.tiling` ``reach``), so tiles with that margin give the untiled
pixels.  The segmentation is a dilated ResNet-101 at the output's size that sees far: its
tiles start on its 8-pixel grid (so they down-sample as the whole image does) and read
:data:`SEG_MARGIN` output pixels beyond their cores, which leaves the probabilities close to,
not equal to, the untiled ones (``tests/benchmarks/bench_sftgan.py`` measures the seam cost).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ttsr_cli.archs.descriptor import Descriptor
from ttsr_cli.archs.sftgan import CLASSES
from ttsr_cli.archs.sftgan.segmentation import STRIDE
from ttsr_cli.devices import default_memory_budget
from ttsr_cli.errors import InputError, TTSRError
from ttsr_cli.imresize import imresize
from ttsr_cli.pixels import bit_depth, pad_to_multiple, to_image
from ttsr_cli.priors import PALETTE
from ttsr_cli.run.common import (
    Progress,
    Runner,
    Upscaled,
    autocast,
    budget_warning,
    scale_slice,
    stitch,
)
from ttsr_cli.tiles import MIN_TILE, Tile, plan_aligned, plan_grid, plan_tiles

#: What the segmentation network's input has subtracted, per BGR channel (0..255 scale).
CAFFE_MEANS_BGR = (103.939, 116.779, 123.68)
#: Working bytes of a segmentation pass per output pixel, and of a generator pass per LR
#: pixel, in fp32: peak RSS grew by 631 bytes per output pixel from 256x256 to 512x512
#: (segmentation) and by 11.8 KB per LR pixel from 64x64 to 128x128 (generator), plus a
#: fixed 40-75 MB; rounded up for headroom.
SEG_PIXEL_BYTES = 1024
GEN_PIXEL_BYTES = 16384
#: What a run keeps for the whole image per output pixel: the segmentation's input, the
#: priors and the output, in fp32.
CANVAS_PIXEL_BYTES = 4 * (3 + len(CLASSES) + 3)
#: Output pixels a segmentation tile reads beyond its core on each side (a multiple of
#: :data:`STRIDE`).
SEG_MARGIN = 128


def segmentation_input(rgb: np.ndarray, scale: int) -> np.ndarray:
    """What OutdoorSceneSeg sees of an LR image (``[H, W, 3]`` RGB on [0, 1]): the image
    up-sampled ``scale`` times by MATLAB's bicubic, in BGR on 0..255 less the Caffe means
    (float ``[scale H, scale W, 3]``).  Training makes its input the same way."""
    return imresize(rgb[..., ::-1], scale) * 255 - CAFFE_MEANS_BGR


class SFTGANRunner(Runner):
    """A generator and the segmentation network that makes its priors, on arrays (uint8 or
    uint16 ``[H, W, 3]``; the same type out).  ``memory_budget`` (bytes) bounds one image's
    run (None: half of what is free when it starts); ``tile`` forces generator tiles of that
    many LR pixels a side (and segmentation tiles of the same output area); ``seg_margin``:
    the segmentation tiles' margin in output pixels; ``channels_last`` runs both networks'
    convolutions in NHWC (the models are converted in place; 0.88x and 0.83x of the time on
    a CPU, within 3e-5 of the probabilities)."""

    def __init__(
        self,
        model: nn.Module,
        descriptor: Descriptor,
        segmentation: nn.Module | None,
        device: torch.device,
        precision: torch.dtype = torch.float32,
        memory_budget: int | None = None,
        tile: int | None = None,
        seg_margin: int = SEG_MARGIN,
        channels_last: bool = True,
    ) -> None:
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=self.layout).eval()
        if segmentation is not None:
            segmentation = segmentation.to(device, memory_format=self.layout).eval()
        self.segmentation = segmentation
        self.descriptor, self.device, self.precision = descriptor, device, precision
        self.memory_budget, self.tile, self.seg_margin = memory_budget, tile, seg_margin

    @torch.inference_mode()
    def upscale_detailed(self, lr: np.ndarray, references: object = None) -> Upscaled:
        """x4 of ``lr`` under its segmentation priors; ``mode["classes"]`` gives each class's
        share of the output's pixels (by arg-max), ``mode["segmentation_tiles"]`` how many
        tiles the segmentation ran in.  ``references``: SFT-GAN searches none, but takes
        given priors there (``--seg-maps``: float ``[8, 4H, 4W]``), which replace the
        segmentation network's."""
        if references is not None and not isinstance(references, np.ndarray):
            raise TTSRError("SFT-GAN takes no reference image (its priors come from the image)")
        h, w = lr.shape[:2]
        top = 65535.0 if bit_depth(lr) == 16 else 255.0
        scale, multiple = self.descriptor.scale, self.descriptor.size_multiple
        rgb = pad_to_multiple(lr, multiple).astype(np.float64) / top
        gen_tiles = self.generator_tiles(*rgb.shape[:2])
        if references is None:
            seg_tiles = self.segmentation_tiles(rgb.shape[0] * scale, rgb.shape[1] * scale)
            progress = Progress(self.device, self.on_tile, len(seg_tiles) + len(gen_tiles))
            priors = self.priors(rgb, seg_tiles, progress)
        else:
            seg_tiles = []
            progress = Progress(self.device, self.on_tile, len(gen_tiles))
            given = pad_to_multiple(references.transpose(1, 2, 0), multiple * scale)
            priors = torch.from_numpy(np.ascontiguousarray(given.transpose(2, 0, 1))[None])
        sr = self.generate(rgb, priors, gen_tiles, progress)
        sr, priors = sr[..., : h * scale, : w * scale], priors[..., : h * scale, : w * scale]
        image = to_image(sr, bit_depth(lr), signed=False)
        mode = {"classes": shares(priors), "segmentation_tiles": len(seg_tiles)}
        warnings = self.budget_warnings(*rgb.shape[:2], segmentation=references is None)
        return Upscaled(image, len(gen_tiles), mode, warnings=warnings, priors=priors[0].numpy())

    def priors(self, rgb: np.ndarray, tiles: list[Tile], progress: Progress) -> torch.Tensor:
        """``[1, 8, 4H, 4W]`` class probabilities of ``rgb`` (``[H, W, 3]`` on [0, 1]), on the
        CPU, the segmentation run in ``tiles`` of the output."""
        if self.segmentation is None:
            raise InputError(
                "no priors for this image: give --seg-weights (the segmentation network) or a "
                "map in --seg-maps"
            )
        bgr = segmentation_input(rgb, self.descriptor.scale)
        x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1))[None]).float()
        segmentation = self.segmentation

        def segment(tile: Tile) -> torch.Tensor:
            crop = x[(..., *tile.read)].to(self.device).contiguous(memory_format=self.layout)
            with autocast(self.device, self.precision):
                return segmentation(crop).float().cpu()

        return stitch(torch.empty(1, len(CLASSES), *x.shape[-2:]), tiles, segment, progress)

    def generate(
        self, rgb: np.ndarray, priors: torch.Tensor, tiles: list[Tile], progress: Progress
    ) -> torch.Tensor:
        """The generator's ``[1, 3, 4H, 4W]`` output (CPU), in ``tiles`` of the LR, each with
        the priors under what it reads."""
        scale = self.descriptor.scale
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))[None]).float()
        layout = self.layout

        def upscale(tile: Tile) -> torch.Tensor:
            rows, cols = tile.read
            under = priors[..., scale_slice(rows, scale), scale_slice(cols, scale)]
            crop = x[..., rows, cols].to(self.device).contiguous(memory_format=layout)
            under = under.to(self.device).contiguous(memory_format=layout)
            with autocast(self.device, self.precision):
                return self.model(crop, under).float().cpu()

        out = torch.empty(1, 3, x.shape[-2] * scale, x.shape[-1] * scale)
        return stitch(out, tiles, upscale, progress, scale)

    def generator_tiles(self, height: int, width: int) -> list[Tile]:
        """LR tiles within the budget, each reading the generator's reach beyond its core."""
        reach = self.descriptor.tiling.reach
        if self.tile is not None:
            return plan_tiles(height, width, self.tile, reach)
        return plan_grid(height, width, self._spare(height, width) // GEN_PIXEL_BYTES, reach)

    def segmentation_tiles(self, height: int, width: int) -> list[Tile]:
        """Output-size tiles on the segmentation's grid within the budget (module docstring)."""
        if self.tile is not None:
            side = self.tile * self.descriptor.scale + 2 * self.seg_margin  # cores of the tile
            return plan_aligned(height, width, side * side, self.seg_margin, STRIDE)
        scale = self.descriptor.scale
        spare = self._spare(height // scale, width // scale)
        return plan_aligned(height, width, spare // SEG_PIXEL_BYTES, self.seg_margin, STRIDE)

    def budget_warnings(self, height: int, width: int, segmentation: bool) -> list[str]:
        """The shortfall of ``--max-memory`` when even the smallest tiles of a network that
        ran do not fit it (they run anyway, as TTSR's do), said once per image."""
        if self.tile is not None or self.memory_budget is None:
            return []
        side = MIN_TILE + 2 * self.descriptor.tiling.reach
        smallest = side * side * GEN_PIXEL_BYTES
        if segmentation:
            seg_side = MIN_TILE + 2 * self.seg_margin
            smallest = max(smallest, seg_side * seg_side * SEG_PIXEL_BYTES)
        scale = self.descriptor.scale
        need = height * width * scale * scale * CANVAS_PIXEL_BYTES + smallest
        return [budget_warning(need - self.memory_budget)] if need > self.memory_budget else []

    def _spare(self, height: int, width: int) -> int:
        """The budget less the whole-image canvases, for an LR of ``height x width``."""
        budget = self.memory_budget or default_memory_budget(self.device)
        scale = self.descriptor.scale
        return max(1, budget - height * width * scale * scale * CANVAS_PIXEL_BYTES)


def shares(priors: torch.Tensor) -> dict[str, float]:
    """Each class's share of the pixels, by arg-max of the probabilities (rounded to 1e-4)."""
    # Classes last: each arg-max reads 8 neighbouring values, not 8 planes far apart.
    top = priors[0].permute(1, 2, 0).contiguous().argmax(-1)
    counts = torch.bincount(top.flatten(), minlength=len(CLASSES))
    total = float(counts.sum())
    return {name: round(float(n) / total, 4) for name, n in zip(CLASSES, counts, strict=True)}


def prior_pictures(priors: np.ndarray) -> dict[str, np.ndarray]:
    """What ``--save-priors`` writes, by name: ``segmentation`` (the arg-max in the official
    palette) and ``prob_CLASS`` (each class's probability, 0 black to 1 white)."""
    pictures = {"segmentation": np.asarray(PALETTE, dtype=np.uint8)[priors.argmax(0)]}
    for name, plane in zip(CLASSES, priors, strict=True):
        grey = np.clip(np.rint(plane * 255), 0, 255).astype(np.uint8)
        pictures[f"prob_{name}"] = np.repeat(grey[..., None], 3, axis=2)
    return pictures
