"""Attention heat maps, texture-source maps and comparison sheets."""

from __future__ import annotations

import numpy as np

from ttsr_cli.pictures import (
    attention_picture,
    compare_sheet,
    heat_colours,
    hsv_to_rgb,
    most_used_region,
    source_picture,
)


def test_heat_map_runs_dark_to_bright_and_clips() -> None:
    colours = heat_colours(np.array([-1.0, 0.0, 0.5, 1.0, 2.0]))
    assert colours.dtype == np.uint8 and colours.shape == (5, 3)
    brightness = colours.astype(int).sum(axis=1)
    assert list(brightness) == sorted(brightness)
    assert (colours[0] == colours[1]).all() and (colours[3] == colours[4]).all()


def test_hsv_primaries() -> None:
    h = np.array([0.0, 1 / 3, 2 / 3])
    rgb = hsv_to_rgb(h, np.ones(3), np.ones(3))
    assert rgb.tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


def test_attention_picture_has_the_output_size() -> None:
    picture = attention_picture(np.random.default_rng(0).random((6, 8)), (32, 24))
    assert picture.shape == (24, 32, 3) and picture.dtype == np.uint8


def test_source_picture_tells_references_and_positions_apart() -> None:
    grids = [(4, 5), (3, 3)]
    source = np.array([[0, 4], [19, 20]])  # ref 0 at (0,0), (0,4), (3,4); ref 1 at (0,0)
    picture = source_picture(source, grids, (2, 2))
    colours = {tuple(c) for c in picture.reshape(-1, 3)}
    assert len(colours) == 4


def test_most_used_region_finds_the_densest_window() -> None:
    grids = [(10, 10), (20, 20)]
    source = np.full((3, 4), 100 + 12 * 20 + 7)  # every match at reference 1, row 12, col 7
    source[0, 0] = 5
    number, top, left, height, width = most_used_region(source, grids)
    assert number == 1 and (height, width) == (3, 4)
    assert top <= 12 < top + height and left <= 7 < left + width


def test_compare_sheet_puts_panels_side_by_side() -> None:
    a = np.zeros((20, 30, 3), np.uint8)
    b = np.full((20, 30, 3), 65535, np.uint16)
    sheet = compare_sheet([("a", a), ("b", b), ("ref", a[:10, :12])])
    assert sheet.shape[1] == 30 + 30 + 12 + 2 * 4 and sheet.shape[0] > 20
    assert sheet.dtype == np.uint8
