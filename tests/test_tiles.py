"""Tiling to a memory budget: the estimate, the tile plan, seamless blending."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import BUNDLED, sample_image
from ttsr_cli.devices import SEARCH_BUDGET_CAP, SEARCH_BUDGET_FLOOR, search_budget_within
from ttsr_cli.metrics import psnr_rgb
from ttsr_cli.run.ttsr import TTSRRunner
from ttsr_cli.tiles import (
    COARSE_FLOOR,
    FINE_FLOOR,
    FINE_OVERLAP,
    MIN_TILE,
    Span,
    Tile,
    TilePlan,
    canvas_bytes,
    coarse_output_bytes,
    coarse_pixel_bytes,
    core_slices,
    estimate_peak_bytes,
    fine_pixel_bytes,
    plan_grid,
    plan_passes,
    plan_tiles,
    ramp,
    spans,
    split,
)
from ttsr_cli.weights import load


def test_estimate_grows_with_area_and_widths() -> None:
    one = estimate_peak_bytes(100, 100, 64, 64)
    assert estimate_peak_bytes(200, 100, 64, 64) == 2 * one
    assert estimate_peak_bytes(100, 100, 128, 128) == 2 * one
    assert estimate_peak_bytes(100, 100, 64, 64, elem_size=2) == one // 2
    # The paper configuration at 1000x750 needs tens of GB untiled: the reason tiles exist.
    assert estimate_peak_bytes(750, 1000, 64, 64) > 30e9


def reads(tiles: list[Tile]) -> list[int]:
    """LR pixels each tile reads, margins included."""
    return [(t.y.read1 - t.y.read0) * (t.x.read1 - t.x.read0) for t in tiles]


def test_passes_fit_the_budget_or_run_whole() -> None:
    widths = (64, 64, 128)
    assert plan_passes((100, 100), 1 << 40, widths, 32) is None
    budget = 4 << 30
    plan = plan_passes((750, 1000), budget, widths, 32)
    assert plan is not None and 1 < len(plan.coarse) < len(plan.fine)
    # The coarse outputs of the whole image come off first; each pass's tiles fit the rest.
    kept = coarse_output_bytes(750, 1000, 64, 4) + canvas_bytes(750, 1000)
    assert plan.budget == budget - kept
    assert max(reads(plan.coarse)) * coarse_pixel_bytes(64, 128, 4) <= plan.budget
    assert max(reads(plan.fine)) * fine_pixel_bytes(64, 64, 4) <= plan.budget
    # Narrow models cost no less than the measured floor per pixel; the paper widths more.
    assert fine_pixel_bytes(32, 16, 4) == FINE_FLOOR <= fine_pixel_bytes(64, 64, 4)
    assert coarse_pixel_bytes(32, 32, 2) == COARSE_FLOOR // 2 < coarse_pixel_bytes(64, 128, 2)
    # Half-size elements: fewer tiles.
    half = plan_passes((750, 1000), budget, widths, 32, elem_size=2)
    assert half is not None and len(half.fine) < len(plan.fine)
    for tight in (-1, 1):
        plan = plan_passes((750, 1000), tight, widths, 32)
        assert plan is not None and plan.coarse == plan_tiles(750, 1000, MIN_TILE, 32)


@pytest.mark.parametrize("max_pixels", [30_000, 62_000, 80_000, 156_000])
def test_grid_reads_least_within_the_tile_limit(max_pixels: int) -> None:
    tiles = plan_grid(750, 1000, max_pixels, FINE_OVERLAP)
    assert max(reads(tiles)) <= max_pixels
    # No grid of square-or-oblong equal cores that fits reads fewer pixels in all.
    work = sum(reads(tiles))
    for rows, cols in itertools.product(range(1, 25), range(1, 33)):
        ys, xs = split(750, rows, FINE_OVERLAP), split(1000, cols, FINE_OVERLAP)
        other = [Tile(y, x) for y in ys for x in xs]
        if max(reads(other)) <= max_pixels:
            assert sum(reads(other)) >= work
    # Oblong cores where they save work: 62k pixels take 4 x 4 cores of 250x188 (square
    # cores of at most 217 = sqrt(62k) - 32 would need 4 x 5).
    tiles = plan_grid(750, 1000, 62_000, FINE_OVERLAP)
    assert len({t.y for t in tiles}) == 4 and len({t.x for t in tiles}) == 4
    whole = Tile(Span(0, 750, 0, 750), Span(0, 1000, 0, 1000))
    assert plan_grid(750, 1000, 10**6, FINE_OVERLAP) == [whole]


def test_search_takes_a_quarter_of_the_budget_within_its_bounds() -> None:
    assert search_budget_within(1 << 30) == 1 << 28
    assert search_budget_within(64 << 30) == SEARCH_BUDGET_CAP
    assert search_budget_within(1000) == SEARCH_BUDGET_FLOOR


@pytest.mark.parametrize(("length", "core", "overlap"), [(100, 30, 8), (97, 97, 8), (50, 7, 3)])
def test_cores_partition_and_weights_sum_to_one(length: int, core: int, overlap: int) -> None:
    parts = spans(length, core, overlap)
    assert parts[0].core0 == 0 and parts[-1].core1 == length
    assert all(a.core1 == b.core0 for a, b in itertools.pairwise(parts))
    assert all(p.core1 - p.core0 <= core for p in parts)
    total = np.zeros(length * 4)
    for part in parts:
        total[part.read0 * 4 : part.read1 * 4] += ramp(part, length, overlap, 4)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_plan_is_row_major_and_cores_are_inside_reads() -> None:
    tiles = plan_tiles(50, 70, 32, 8)
    assert len(tiles) == 2 * 3
    assert [t.y.core0 for t in tiles] == [0, 0, 0, 25, 25, 25]
    rows, cols = core_slices(tiles[4])
    assert rows == slice(8, 33) and cols == slice(8, 32)


def test_a_small_budget_tiles_and_tiles_are_seamless(tiny_model) -> None:
    lr = sample_image("astronaut", (90, 70))
    whole = TTSRRunner(tiny_model, torch.device("cpu"))
    ref = whole.encode_reference(sample_image("coffee", (120, 80)))
    expected = whole.upscale_detailed(lr, [ref])
    tiled = TTSRRunner(tiny_model, torch.device("cpu"), memory_budget=4 << 20, overlap=16)
    plan = tiled.tile_plan(70, 90, [ref])
    assert plan is not None and plan.coarse == plan_tiles(70, 90, MIN_TILE, 16)
    seen = []
    tiled.on_tile = lambda done, total: seen.append((done, total))
    result = tiled.upscale_detailed(lr, [ref])
    # Both passes cut the 90x70 LR into 3 x 3 cores of at most 32 pixels; progress counts both.
    assert result.tiles == 9 and seen == [(i, 18) for i in range(1, 19)]
    # Measured: 88.8 dB, 26 of 75,600 values one level apart, where the budgeted search's
    # bands round differently; with zero margins 49.0 dB.
    assert psnr_rgb(result.sr, expected.sr) >= 80
    assert np.abs(result.sr.astype(int) - expected.sr.astype(int)).max() <= 1
    assert (result.source == expected.source).mean() > 0.99
    np.testing.assert_allclose(result.attention, expected.attention, atol=1e-3)


def test_fine_tiles_of_whole_coarse_maps_reproduce_the_untiled_upscale(tiny_model) -> None:
    """With the coarse pass whole, tiling only the 4x stage leaves the output as it was: the
    fine margin covers what stage 3 sees beyond a core."""
    lr = sample_image("astronaut", (96, 72))
    whole = TTSRRunner(tiny_model, torch.device("cpu")).upscale(lr)
    tiled = TTSRRunner(tiny_model, torch.device("cpu"), overlap=FINE_OVERLAP)
    fine = plan_tiles(72, 96, 40, FINE_OVERLAP)
    tiled.tile_plan = lambda h, w, refs: TilePlan(plan_tiles(h, w, 96, 32), fine, 1 << 30)
    result = tiled.upscale_detailed(lr)
    assert result.tiles == 6
    assert np.array_equal(result.sr, whole)


def test_sixteen_bits_tile_too(tiny_model) -> None:
    lr = sample_image("astronaut", (60, 40)).astype(np.uint16) * 257
    whole = TTSRRunner(tiny_model, torch.device("cpu")).upscale(lr)
    tiled = TTSRRunner(tiny_model, torch.device("cpu"), tile=MIN_TILE, overlap=16).upscale(lr)
    assert tiled.dtype == np.uint16 and tiled.shape == whole.shape
    # Measured: 22 of 115,200 values one level of 65,535 apart (float rounding of tile-sized
    # convolutions), none further.
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1


def test_the_bundled_model_tiled_with_its_margins_gives_the_untiled_pixels() -> None:
    """A trained model that sees far: its tiles' margins must cover what it sees beyond a core.

    Measured (96x72 LR, 6 tiles of 40 LR pixels), stage 1's bundled file: with the 32-pixel
    margins (16 in the fine pass) every 8-bit value equals the untiled one; with half margins
    69.1 dB, 0.8% of the values one level apart; with no margins 23.1 dB, up to 92 levels
    apart.  The file fine-tuned for the reference (2026-12-01), with the margins: 1 value of
    331,776 one level apart, the same matches everywhere: the convolutions of other shapes sum
    in another order, and one value rounds the other way."""
    model, _ = load(BUNDLED)
    lr, ref = sample_image("astronaut", (96, 72)), sample_image("coffee", (160, 120))
    whole = TTSRRunner(model, torch.device("cpu"))
    expected = whole.upscale(lr, [whole.encode_reference(ref)])
    tiled = TTSRRunner(model, torch.device("cpu"), tile=40)
    result = tiled.upscale_detailed(lr, [tiled.encode_reference(ref)])
    assert result.tiles == 6
    moved = np.abs(result.sr.astype(int) - expected.astype(int))
    assert moved.max() <= 1 and np.count_nonzero(moved) <= 10  # half margins: 2,600
