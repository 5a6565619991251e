"""Pictures of what the network did: attention heatmaps, texture-source maps, comparison sheets.

They make TTSR's decisions visible: where the reference helped (soft attention S, the
relevance of the best match) and where each region's texture came from (hard attention, the
matched reference position).  Only numpy and Pillow are used, so no plotting library is
needed: the colour map and the HSV conversion are a few lines each.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ttsr_cli.imageio import to_8bit

#: Anchors of a perceptually ordered dark-to-bright map (black, purple, red, orange, yellow):
#: low relevance recedes, high relevance stands out, and it stays readable in greyscale.
_HEAT_ANCHORS = np.array(
    [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32
)
#: Hue range of one reference's columns; short of a full turn so both edges stay distinct.
_HUE_SPAN = 0.85
_LABEL_HEIGHT = 16
_GAP = 4


def heat_colours(values: np.ndarray) -> np.ndarray:
    """``[...]`` values in [0, 1] (clipped) -> ``[..., 3]`` uint8 colours of the heat map."""
    position = np.clip(values, 0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    low = np.minimum(position.astype(np.int64), len(_HEAT_ANCHORS) - 2)
    frac = (position - low)[..., None]
    colours = _HEAT_ANCHORS[low] * (1 - frac) + _HEAT_ANCHORS[low + 1] * frac
    return np.rint(colours).astype(np.uint8)


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Arrays of hue, saturation, value in [0, 1] -> ``[..., 3]`` uint8 RGB."""
    sector = np.floor(h * 6) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [
        np.stack(c, axis=-1)
        for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
    ]
    rgb = np.select([(sector == i)[..., None] for i in range(6)], choices)
    return np.rint(rgb * 255).astype(np.uint8)


def attention_picture(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Soft attention ``[h, w]`` as a heat map of ``size`` ``(width, height)``.  S is a cosine
    similarity: the map shows it on a fixed 0..1 scale so pictures compare across images."""
    colours = Image.fromarray(heat_colours(attention))
    return np.asarray(colours.resize(size, Image.BILINEAR))


def _reference_of(source: np.ndarray, grids: Sequence[tuple[int, int]]) -> tuple[np.ndarray, ...]:
    """Split concatenated match indices into (reference number, row, column)."""
    offsets = np.cumsum([0] + [h * w for h, w in grids])
    ref = np.searchsorted(offsets, source, side="right") - 1
    widths = np.array([w for _, w in grids])[ref]
    local = source - offsets[ref]
    return ref, local // widths, local % widths


def source_picture(
    source: np.ndarray, grids: Sequence[tuple[int, int]], size: tuple[int, int]
) -> np.ndarray:
    """Where each region's texture came from: hue follows the matched column, brightness the
    matched row, so a region copied from one place is one flat colour and a smooth
    correspondence is a smooth gradient.  With several references each gets its own band of
    hues (and alternate ones a paler saturation)."""
    ref, row, col = _reference_of(source, grids)
    heights = np.array([h for h, _ in grids])[ref]
    widths = np.array([w for _, w in grids])[ref]
    fx = col / np.maximum(widths - 1, 1)
    fy = row / np.maximum(heights - 1, 1)
    hue = (ref + _HUE_SPAN * fx) / len(grids)
    saturation = np.where(ref % 2 == 0, 1.0, 0.55)
    colours = hsv_to_rgb(hue, saturation, 0.3 + 0.7 * fy)
    return np.asarray(Image.fromarray(colours).resize(size, Image.NEAREST))


def most_used_region(
    source: np.ndarray, grids: Sequence[tuple[int, int]]
) -> tuple[int, int, int, int, int]:
    """The reference window, as large as the LR (in lv3 positions), that the hard attention
    matched most often: ``(reference, top, left, height, width)`` in lv3 positions."""
    ref, row, col = _reference_of(source, grids)
    h, w = source.shape
    best = (-1, 0, 0, 0, 0, 0)
    for number, (gh, gw) in enumerate(grids):
        wh, ww = min(h, gh), min(w, gw)
        mine = ref == number
        counts = np.zeros((gh + 1, gw + 1), np.int64)
        np.add.at(counts, (row[mine] + 1, col[mine] + 1), 1)
        integral = counts.cumsum(0).cumsum(1)
        windows = (
            integral[wh:, ww:] - integral[:-wh, ww:] - integral[wh:, :-ww] + integral[:-wh, :-ww]
        )
        top, left = np.unravel_index(int(windows.argmax()), windows.shape)
        if windows[top, left] > best[0]:
            best = (int(windows[top, left]), number, int(top), int(left), wh, ww)
    return best[1:]


def compare_sheet(panels: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    """Labelled panels side by side on a white sheet, each under a line of text."""
    height = max(p.shape[0] for _, p in panels) + _LABEL_HEIGHT
    width = sum(p.shape[1] for _, p in panels) + _GAP * (len(panels) - 1)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    x = 0
    for label, panel in panels:
        sheet.paste(Image.fromarray(to_8bit(panel)), (x, _LABEL_HEIGHT))
        draw.text((x + 2, 2), label, fill="black", font=font)
        x += panel.shape[1] + _GAP
    return np.asarray(sheet)
