"""Tiling to a memory budget: the estimate, the tile plan, seamless blending."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import sample_image
from ttsr_cli.devices import SEARCH_BUDGET_CAP, SEARCH_BUDGET_FLOOR, search_budget_within
from ttsr_cli.pipeline import Upscaler
from ttsr_cli.tiles import (
    MIN_TILE,
    core_slices,
    estimate_peak_bytes,
    plan_tiles,
    ramp,
    spans,
    tile_side,
)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_estimate_grows_with_area_and_widths() -> None:
    one = estimate_peak_bytes(100, 100, 64, 64)
    assert estimate_peak_bytes(200, 100, 64, 64) == 2 * one
    assert estimate_peak_bytes(100, 100, 128, 128) == 2 * one
    assert estimate_peak_bytes(100, 100, 64, 64, elem_size=2) == one // 2
    # The paper configuration at 1000x750 needs tens of GB untiled: the reason tiles exist.
    assert estimate_peak_bytes(750, 1000, 64, 64) > 30e9


def test_tile_side_fits_the_budget_or_runs_whole() -> None:
    widths = (64, 64)
    assert tile_side((100, 100), 1 << 40, widths, 32) is None
    side = tile_side((750, 1000), 4 << 30, widths, 32)
    assert side is not None and side < 750
    assert estimate_peak_bytes(side + 64, side + 64, *widths) <= 4 << 30
    assert tile_side((750, 1000), -1, widths, 32) == MIN_TILE
    assert tile_side((750, 1000), 1, widths, 32) == MIN_TILE


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
    whole = Upscaler(tiny_model, torch.device("cpu"))
    ref = whole.encode_reference(sample_image("coffee", (120, 80)))
    expected = whole.upscale_detailed(lr, [ref])
    tiled = Upscaler(tiny_model, torch.device("cpu"), memory_budget=4 << 20, overlap=16)
    assert tiled.tile_core(70, 90, [ref]) == MIN_TILE
    seen = []
    tiled.on_tile = lambda done, total: seen.append((done, total))
    result = tiled.upscale_detailed(lr, [ref])
    assert result.tiles == 9 and seen[-1] == (9, 9)
    assert psnr(result.sr, expected.sr) >= 45
    assert (result.source == expected.source).mean() > 0.99
    np.testing.assert_allclose(result.attention, expected.attention, atol=1e-3)


def test_sixteen_bits_tile_too(tiny_model) -> None:
    lr = sample_image("astronaut", (60, 40)).astype(np.uint16) * 257
    whole = Upscaler(tiny_model, torch.device("cpu")).upscale(lr)
    tiled = Upscaler(tiny_model, torch.device("cpu"), tile=MIN_TILE, overlap=16).upscale(lr)
    assert tiled.dtype == np.uint16 and tiled.shape == whole.shape
    assert psnr(tiled / 257.0, whole / 257.0) >= 45
