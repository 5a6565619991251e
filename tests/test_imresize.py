"""MATLAB-style bicubic ``imresize`` against SFT-GAN's official segmentation input, and against
a plain per-pixel reference written here from the same rules, so a vectorisation slip (wrong
tap, wrong mirror, wrong normalisation) cannot hide behind the fixture's float32 tolerance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import require_sftgan_fixture
from ttsr_cli.imresize import imresize

#: Caffe-style BGR means the official segmentation script subtracts (0..255 scale).
BGR_MEANS = np.array([103.939, 116.779, 123.68])


def _reference_cubic(d: float) -> float:
    a = abs(d)
    if a <= 1:
        return 1.5 * a**3 - 2.5 * a**2 + 1
    if a <= 2:
        return -0.5 * a**3 + 2.5 * a**2 - 4 * a + 2
    return 0.0


def _mirror(j: int, n: int) -> int:
    """0-based index mirrored into [0, n), edge included, as often as needed."""
    while j < 0 or j >= n:
        j = -j - 1 if j < 0 else 2 * n - 1 - j
    return j


def _reference_taps(in_len: int, scale: float, antialiasing: bool) -> list[dict[int, float]]:
    """For each output position, {0-based source index: normalised weight}, from MATLAB's rule."""
    stretch = scale if antialiasing and scale < 1 else 1.0
    half = 2 / stretch
    rows = []
    for x in range(1, math.ceil(in_len * scale) + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        raw = {}
        for j in range(math.floor(u - half), math.ceil(u + half) + 1):
            raw[j] = stretch * _reference_cubic(stretch * (u - j))
        total = sum(raw.values())
        taps: dict[int, float] = {}
        for j, w in raw.items():
            src = _mirror(j - 1, in_len)
            taps[src] = taps.get(src, 0.0) + w / total
        rows.append(taps)
    return rows


def _reference(image: np.ndarray, scale: float, antialiasing: bool) -> np.ndarray:
    """Every output pixel as a plain 2-D weighted sum over source pixels."""
    rows = _reference_taps(image.shape[0], scale, antialiasing)
    cols = _reference_taps(image.shape[1], scale, antialiasing)
    out = np.zeros((len(rows), len(cols), image.shape[2]))
    for i, row_taps in enumerate(rows):
        for k, col_taps in enumerate(cols):
            for j, wj in row_taps.items():
                for m, wm in col_taps.items():
                    out[i, k] += wj * wm * image[j, m]
    return out


@pytest.mark.parametrize(
    ("scale", "antialiasing"), [(0.25, True), (0.25, False), (0.5, True), (2, True), (4, True)]
)
def test_matches_per_pixel_reference(scale: float, antialiasing: bool) -> None:
    image = np.random.default_rng(7).random((13, 11, 2))
    got = imresize(image, scale, antialiasing=antialiasing)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, _reference(image, scale, antialiasing), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 0.5, 1.5, 2, 4])
@pytest.mark.parametrize("antialiasing", [True, False])
def test_constant_stays_constant(scale: float, antialiasing: bool) -> None:
    image = np.full((17, 9, 3), 0.3)
    np.testing.assert_allclose(imresize(image, scale, antialiasing), 0.3, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "scale", "expected"),
    [((40, 56, 3), 4, (160, 224, 3)), ((13, 11, 1), 0.25, (4, 3, 1)), ((7, 5, 2), 1.5, (11, 8, 2))],
)
def test_output_size_is_ceil(shape: tuple, scale: float, expected: tuple) -> None:
    assert imresize(np.zeros(shape), scale).shape == expected


def test_scale_one_is_identity() -> None:
    image = np.random.default_rng(1).random((13, 11, 3))
    np.testing.assert_allclose(imresize(image, 1), image, rtol=0, atol=1e-12)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="H, W, C"):
        imresize(np.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match="positive"):
        imresize(np.zeros((4, 4, 1)), 0)


def test_sftgan_segmentation_input() -> None:
    """``seg_input`` as the official test_segmentation.py builds it from the fixture's LR."""
    parity = torch.load(require_sftgan_fixture() / "parity.pt", weights_only=True)
    rgb = parity["inputs"]["lr_uint8"].numpy()
    lr_bgr = rgb[..., ::-1].astype(np.float64)
    seg = imresize(lr_bgr / 255, 4) * 255 - BGR_MEANS
    ours = torch.from_numpy(seg.transpose(2, 0, 1)[None].astype(np.float32))
    expected = parity["inputs"]["seg_input"]
    assert ours.shape == expected.shape == (1, 3, 160, 224)
    assert (ours - expected).abs().max().item() < 1e-3
