"""Splitting an upscale into overlapping LR tiles so that any image fits a memory budget.

The main network works at 4x the LR resolution with ``n_feats`` channels, so an untiled
upscale needs memory proportional to the LR area (about 30 GB for a 1000x750 LR with the
paper configuration).  Tiles bound that: each covers a *core* of the LR plus a margin of
``overlap`` LR pixels on every side that has a neighbour.  The outer half of each margin is
discarded (its pixels saw the tile's border instead of the image) and the inner half is
cross-faded linearly with the neighbour, whose weights rise exactly as these fall, so the
weights of every output pixel sum to one and no seam is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

SCALE = 4
#: Default margin, in LR pixels, that a tile reads beyond its core on each side.
DEFAULT_OVERLAP = 32
#: Smallest tile core worth running: below this the margins cost more than the core.
MIN_TILE = 32
#: Tensors at 4x resolution alive at the peak of an untiled upscale: ``n_feats``-channel ones
#: in the main network, ``lte_widths[0]``-channel ones in the LTE and texture transfer.
#: Calibrated with the paper configuration (peak RSS of 100x75 and 200x150 LRs grows by
#: 43 KB per LR pixel, 7+4 tensors' worth) and rounded up: 49 KB per LR pixel.
MAINNET_TENSORS = 8
LTE_TENSORS = 4


def estimate_peak_bytes(
    lr_height: int, lr_width: int, n_feats: int, lte_width: int, elem_size: int = 4
) -> int:
    """Working memory of an untiled upscale of an LR image, beyond the model and references.

    Everything large lives at 4x resolution, so the estimate is linear in the LR area.
    """
    hr_pixels = lr_height * lr_width * SCALE * SCALE
    return hr_pixels * elem_size * (MAINNET_TENSORS * n_feats + LTE_TENSORS * lte_width)


@dataclass(frozen=True)
class Span:
    """One tile along one axis: its core ``[core0, core1)`` and what it reads ``[read0, read1)``."""

    core0: int
    core1: int
    read0: int
    read1: int


@dataclass(frozen=True)
class Tile:
    """A rectangle of the LR image: rows ``y`` and columns ``x``."""

    y: Span
    x: Span


def tile_side(
    lr_size: tuple[int, int],
    budget: int,
    widths: tuple[int, int],
    overlap: int,
    elem_size: int = 4,
) -> int | None:
    """Largest square core (LR pixels) whose tile, margins included, fits ``budget`` bytes;
    None when the whole ``(height, width)`` image fits.  ``widths``: ``(n_feats, lte width)``.
    Never smaller than :data:`MIN_TILE`, whatever the budget: a run that is tight on memory
    should still try."""
    if estimate_peak_bytes(*lr_size, *widths, elem_size) <= budget:
        return None
    per_pixel = estimate_peak_bytes(1, 1, *widths, elem_size)
    side = int((max(budget, 0) / per_pixel) ** 0.5) - 2 * overlap
    return max(MIN_TILE, side)


def spans(length: int, core: int, overlap: int) -> list[Span]:
    """Equal cores of at most ``core`` pixels covering ``length``, each reading ``overlap``
    more on the sides where a neighbour is (clamped to the image)."""
    count = max(1, -(-length // core))
    bounds = [round(i * length / count) for i in range(count + 1)]
    return [Span(a, b, max(0, a - overlap), min(length, b + overlap)) for a, b in pairwise(bounds)]


def plan_tiles(lr_height: int, lr_width: int, core: int, overlap: int) -> list[Tile]:
    """Row-major tiles of at most ``core x core`` LR pixels with ``overlap``-pixel margins."""
    return [
        Tile(y, x) for y in spans(lr_height, core, overlap) for x in spans(lr_width, core, overlap)
    ]


def ramp(span: Span, length: int, overlap: int, scale: int) -> np.ndarray:
    """Blend weights along one axis for the ``scale``-times output of ``span``.

    Around each inner core boundary c the weight crosses from 1 to 0 linearly over
    ``[c - overlap/2, c + overlap/2]`` (LR units, at output pixel centres); the neighbour's
    weight is its complement there, so weights sum to one everywhere.
    """
    centres = (np.arange(span.read0 * scale, span.read1 * scale) + 0.5) / scale
    width = max(overlap, 1e-9)
    weight = np.ones_like(centres)
    if span.core0 > 0:
        weight = np.minimum(weight, np.clip((centres - span.core0) / width + 0.5, 0, 1))
    if span.core1 < length:
        weight = np.minimum(weight, np.clip((span.core1 - centres) / width + 0.5, 0, 1))
    return weight.astype(np.float32)


def core_slices(tile: Tile) -> tuple[slice, slice]:
    """Rows and columns of the tile's core, relative to what the tile read."""
    return (
        slice(tile.y.core0 - tile.y.read0, tile.y.core1 - tile.y.read0),
        slice(tile.x.core0 - tile.x.read0, tile.x.core1 - tile.x.read0),
    )
