"""Splitting an upscale into overlapping LR tiles so that any image fits a memory budget.

The main network works at 4x the LR resolution with ``n_feats`` channels, so an untiled
upscale needs memory proportional to the LR area (about 30 GB for a 1000x750 LR with the
paper configuration).  Tiles bound that: each covers a *core* of the LR plus a margin of
``overlap`` LR pixels on every side that has a neighbour.

A tiled upscale runs in two passes, because the network's two halves want different tiles.
Stages 1 and 2 (the 1x and 2x branches, with the search and the lv3/lv2 textures) see far,
through dozens of residual blocks at LR, but hold little memory: the *coarse* pass runs them
in large tiles with the full margin and keeps each tile's core of their outputs, which are
small, for the whole image.  Stage 3 at 4x holds most of the memory but sees only a few LR
pixels beyond its inputs: the *fine* pass runs it in smaller tiles with a margin of
:data:`FINE_OVERLAP` on crops of what the coarse pass kept.  The outer half of each fine
margin is discarded (its pixels saw the tile's border instead of the image) and the inner
half is cross-faded linearly with the neighbour, whose weights rise exactly as these fall,
so the weights of every output pixel sum to one and no seam is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from ttsr_cli.archs.ttsr.model import SCALE

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
#: Maps alive at once in a coarse tile, per LR pixel at 2x resolution: ``n_feats``-channel
#: ones in stage 2, lv2-width ones in the lv2 texture's fold (its buffer, a gathered block
#: set, the result).  Calibrated with the paper configuration (peak RSS of 200x150 and
#: 300x225 LR tiles: 15.4 KB per LR pixel in fp32, 5.8 KB in bf16) and rounded up.
COARSE_MAPS = 8
COARSE_TEXTURES = 4
#: Maps alive at once in a fine tile, per LR pixel at 4x: ``n_feats``-channel ones in stage 3
#: and the tail, lv1-width ones in the lv1 texture's fold.  Calibrated likewise (25.3 KB per
#: LR pixel in fp32, 11.6 KB in bf16) and rounded up; inside a 12 MP bf16 upscale, after
#: tiles before it, a 61.8k-pixel tile took 16.2 KB per pixel, where this gives 16.4.
FINE_MAPS = 6
FINE_TEXTURES = 2
#: Margin of the fine pass's tiles, in LR pixels: stage 3 and the tail reach about 15 LR
#: pixels (8 residual blocks and a merge at 1x, a bicubic x4, a few 3x3 convs at 2x and 4x),
#: so a core's edge, 16 pixels from the tile's border, sees what it sees in the whole image.
FINE_OVERLAP = 16
#: Least working memory per LR pixel, in fp32, of a fine tile (and so of an untiled
#: upscale) and of a coarse tile, whatever the widths: tensors whose width does not shrink
#: with the model's (3-channel images at 4x, convolution scratch, the search's blocks) keep a
#: narrow model near it.  Measured by peak RSS with the bundled ``lite`` model (n_feats 32,
#: LTE 16/32/64): fine tiles of 6-7.5k LR pixels took 23-32 KB per LR pixel where the
#: width-proportional terms give 14.3, coarse tiles 6.6-8.3 KB where they give 6.1.  The
#: paper configuration's terms are at or above both.
FINE_FLOOR = 32 << 10
COARSE_FLOOR = 9 << 10
#: Float maps at 4x resolution that a tiled upscale keeps for the whole image besides the
#: coarse pass's outputs: the blended output and its weights (3 + 1 channels), and the LR
#: up-sampled (3).
CANVAS_CHANNELS = 7


def estimate_peak_bytes(
    lr_height: int, lr_width: int, n_feats: int, lte_width: int, elem_size: int = 4
) -> int:
    """Working memory of an untiled upscale of an LR image, beyond the model and references.

    Everything large lives at 4x resolution, so the estimate is linear in the LR area.
    """
    per_pixel = SCALE * SCALE * elem_size * (MAINNET_TENSORS * n_feats + LTE_TENSORS * lte_width)
    return lr_height * lr_width * max(per_pixel, FINE_FLOOR * elem_size // 4)


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

    @property
    def read(self) -> tuple[slice, slice]:
        """LR rows and columns the tile reads."""
        return slice(self.y.read0, self.y.read1), slice(self.x.read0, self.x.read1)

    @property
    def core(self) -> tuple[slice, slice]:
        """LR rows and columns of the tile's core."""
        return slice(self.y.core0, self.y.core1), slice(self.x.core0, self.x.core1)


@dataclass(frozen=True)
class TilePlan:
    """The coarse and fine passes' tiles, and the working memory each coarse tile may use
    (its LTE pass over the LR up-sampled runs in bands within it)."""

    coarse: list[Tile]
    fine: list[Tile]
    budget: int
    #: Bytes the plan needs beyond the given budget: more than 0 when even the smallest
    #: tiles (:data:`MIN_TILE`) do not fit, and they run anyway.
    shortfall: int = 0


def plan_passes(
    lr_size: tuple[int, int],
    budget: int,
    widths: tuple[int, int, int],
    overlap: int,
    elem_size: int = 4,
) -> TilePlan | None:
    """Tiles for an image of ``(height, width)`` LR pixels within ``budget`` bytes, or None
    when it fits whole.  ``widths``: ``(n_feats, lte lv1 width, lte lv2 width)``.  The coarse
    pass's outputs for the whole image are set aside first; each pass then takes the fewest
    LR pixels of tile work whose largest tile, margins included, fits the rest
    (:func:`plan_grid`)."""
    n_feats, lv1, lv2 = widths
    if estimate_peak_bytes(*lr_size, n_feats, lv1, elem_size) <= budget:
        return None
    kept = coarse_output_bytes(*lr_size, n_feats, elem_size) + canvas_bytes(*lr_size)
    left = max(0, budget - kept)
    coarse_bytes = coarse_pixel_bytes(n_feats, lv2, elem_size)
    fine_bytes = fine_pixel_bytes(n_feats, lv1, elem_size)
    coarse = plan_grid(*lr_size, left // coarse_bytes, overlap)
    fine = plan_grid(*lr_size, left // fine_bytes, fine_overlap(overlap))
    needed = kept + max(max(_reads(coarse)) * coarse_bytes, max(_reads(fine)) * fine_bytes)
    return TilePlan(coarse, fine, left, max(0, needed - budget))


def _reads(tiles: list[Tile]) -> list[int]:
    """LR pixels each tile reads, margins included."""
    return [(t.y.read1 - t.y.read0) * (t.x.read1 - t.x.read0) for t in tiles]


def plan_grid(
    lr_height: int, lr_width: int, max_pixels: int, overlap: int, min_tile: int = MIN_TILE
) -> list[Tile]:
    """Rows x columns of equal cores such that every tile reads at most ``max_pixels`` LR
    pixels, margins included, choosing the grid that reads the fewest pixels in all (margins
    are recomputed work).  Cores may be oblong: a 1000x750 image whose tiles may read 62k
    pixels (16-pixel margins) takes 4 x 4 cores of 250x188, where square ones would need
    4 x 5.  Never cores under ``min_tile`` a side: a run that is tight on memory should
    still try."""
    best: tuple[int, list[Span], list[Span]] | None = None
    for rows in range(1, _most_spans(lr_height, min_tile) + 1):
        ys = split(lr_height, rows, overlap)
        for cols in range(1, _most_spans(lr_width, min_tile) + 1):
            xs = split(lr_width, cols, overlap)
            if _widest(ys) * _widest(xs) <= max_pixels:
                work = _total(ys) * _total(xs)
                if best is None or work < best[0]:
                    best = (work, ys, xs)
                break  # more columns only add work
    if best is None:
        return plan_tiles(lr_height, lr_width, min_tile, overlap)
    return [Tile(y, x) for y in best[1] for x in best[2]]


def _most_spans(length: int, min_tile: int) -> int:
    return max(1, -(-length // min_tile))


def _widest(parts: list[Span]) -> int:
    return max(p.read1 - p.read0 for p in parts)


def _total(parts: list[Span]) -> int:
    return sum(p.read1 - p.read0 for p in parts)


def fine_overlap(overlap: int) -> int:
    """The fine pass's margin: the coarse pass's, up to :data:`FINE_OVERLAP`."""
    return min(overlap, FINE_OVERLAP)


def coarse_pixel_bytes(n_feats: int, lv2: int, elem_size: int) -> int:
    """Working memory of a coarse tile per LR pixel: maps at 2x resolution."""
    maps = SCALE * elem_size * (COARSE_MAPS * n_feats + COARSE_TEXTURES * lv2)
    return max(maps, COARSE_FLOOR * elem_size // 4)


def fine_pixel_bytes(n_feats: int, lv1: int, elem_size: int) -> int:
    """Working memory of a fine tile per LR pixel: maps at 4x resolution."""
    maps = SCALE * SCALE * elem_size * (FINE_MAPS * n_feats + FINE_TEXTURES * lv1)
    return max(maps, FINE_FLOOR * elem_size // 4)


def coarse_output_bytes(lr_height: int, lr_width: int, n_feats: int, elem_size: int) -> int:
    """What the coarse pass keeps for the whole image: the 1x and 2x branches, soft
    attention, and hard attention (int64)."""
    return lr_height * lr_width * (elem_size * (5 * n_feats + 1) + 8)


def canvas_bytes(lr_height: int, lr_width: int) -> int:
    """What a tiled upscale keeps at 4x in fp32 for the whole image (:data:`CANVAS_CHANNELS`)."""
    return lr_height * lr_width * SCALE * SCALE * 4 * CANVAS_CHANNELS


def spans(length: int, core: int, overlap: int) -> list[Span]:
    """Equal cores of at most ``core`` pixels covering ``length`` (see :func:`split`)."""
    return split(length, max(1, -(-length // core)), overlap)


def split(length: int, count: int, overlap: int) -> list[Span]:
    """``count`` equal cores covering ``length``, each reading ``overlap`` more on the sides
    where a neighbour is (clamped to the image)."""
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


def plan_aligned(height: int, width: int, max_pixels: int, overlap: int, align: int) -> list[Tile]:
    """:func:`plan_grid` on blocks of ``align`` pixels: every core and read starts at a
    multiple of ``align`` (a network that down-samples by ``align`` then sees the same grid in
    a tile as in the whole image), ``overlap`` rounded up to whole blocks."""
    rows, cols, margin = -(-height // align), -(-width // align), -(-overlap // align)
    blocks = plan_grid(rows, cols, max(1, max_pixels // align**2), margin, -(-MIN_TILE // align))
    return [Tile(_times(t.y, align, height), _times(t.x, align, width)) for t in blocks]


def _times(span: Span, factor: int, length: int) -> Span:
    return Span(
        *(min(v * factor, length) for v in (span.core0, span.core1, span.read0, span.read1))
    )


def core_slices(tile: Tile) -> tuple[slice, slice]:
    """Rows and columns of the tile's core, relative to what the tile read."""
    return (
        slice(tile.y.core0 - tile.y.read0, tile.y.core1 - tile.y.read0),
        slice(tile.x.core0 - tile.x.read0, tile.x.core1 - tile.x.read0),
    )
