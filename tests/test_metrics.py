"""The TTSR metric on cases whose answer can be worked out by hand, and against skimage."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from conftest import sample_image
from ttsr_cli.errors import InputError
from ttsr_cli.metrics import C1, gaussian_window, luminance, score, ssim

#: Sum of the luminance weights: a grey step of d levels moves Y by d * this.
Y_GAIN = (65.738 + 129.057 + 25.064) / 256


def flat(value: float, size: int = 32) -> np.ndarray:
    return np.full((size, size, 3), value, dtype=np.float64)


def test_identical_images_are_infinitely_close() -> None:
    image = sample_image("astronaut", (40, 30))
    result = score(image, image)
    assert result.psnr == math.inf
    assert result.ssim == pytest.approx(1.0)


def test_grey_offset_psnr_is_the_luminance_step() -> None:
    # Every pixel 10 levels brighter in all channels: Y differs by 10 * Y_GAIN / 255 everywhere.
    expected = -20 * math.log10(10 * Y_GAIN / 255)
    assert score(flat(110), flat(100)).psnr == pytest.approx(expected, abs=1e-9)


def test_psnr_weights_channels_by_luminance() -> None:
    red, blue = flat(100), flat(100)
    red[..., 0] += 20
    blue[..., 2] += 20
    assert score(red, flat(100)).psnr == pytest.approx(-20 * math.log10(20 * 65.738 / 256 / 255))
    assert score(blue, flat(100)).psnr == pytest.approx(-20 * math.log10(20 * 25.064 / 256 / 255))


def test_no_border_shave_in_psnr() -> None:
    # One differing pixel in the corner counts: the original shaves no border.
    sr = flat(100)
    sr[0, 0] = 200
    mse = (100 * Y_GAIN / 255) ** 2 / sr[..., 0].size
    assert score(sr, flat(100)).psnr == pytest.approx(-10 * math.log10(mse))


def test_both_images_are_rounded_to_8_bits_first() -> None:
    assert score(flat(100.4), flat(99.6)).psnr == math.inf
    assert score(flat(300.0), flat(255)).psnr == math.inf  # out of range clips to 255


def test_sizes_that_differ_are_cropped_to_the_common_top_left() -> None:
    hr = sample_image("astronaut", (40, 30)).astype(np.float64)
    sr = np.zeros((34, 45, 3))
    sr[:30, :40] = hr
    assert score(sr, hr).psnr == math.inf


def test_ssim_of_flat_images_is_the_luminance_term() -> None:
    # No variance anywhere: SSIM = (2ab + C1) / (a^2 + b^2 + C1) on the two Y values.
    a, b = 100 * Y_GAIN + 16, 120 * Y_GAIN + 16
    expected = (2 * a * b + C1) / (a**2 + b**2 + C1)
    assert score(flat(100), flat(120)).ssim == pytest.approx(expected, abs=1e-12)


def test_luminance_of_white_and_black() -> None:
    assert luminance(flat(0, 1))[0, 0] == pytest.approx(16.0)
    assert luminance(flat(255, 1))[0, 0] == pytest.approx(16 + 255 * Y_GAIN)


def test_gaussian_window_is_opencvs() -> None:
    expected = cv2.getGaussianKernel(11, 1.5)[:, 0]
    np.testing.assert_allclose(gaussian_window(), expected, rtol=1e-12)


def test_ssim_matches_a_full_2d_filter_cropped_to_the_valid_region() -> None:
    # The original's way: 11x11 window with OpenCV, then drop 5 pixels at every edge.
    x = luminance(sample_image("astronaut", (64, 48)))
    y = luminance(sample_image("coffee", (64, 48)))
    taps = cv2.getGaussianKernel(11, 1.5)
    window = taps @ taps.T

    def blur(a: np.ndarray) -> np.ndarray:
        return cv2.filter2D(a, -1, window)[5:-5, 5:-5]

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c2 = (0.03 * 255) ** 2
    ssim_map = ((2 * mx * my + C1) * (2 * cov + c2)) / ((mx**2 + my**2 + C1) * (vx + vy + c2))
    assert ssim(x, y) == pytest.approx(float(ssim_map.mean()), abs=1e-10)


def test_ssim_agrees_with_skimage_on_luminance() -> None:
    """skimage filters the whole image (reflecting at the edges) but then averages the SSIM
    map only over the region cropped by (win_size - 1) / 2 = 5 pixels, where its 11-tap
    window (sigma 1.5, truncate 3.5 -> radius 5) never reaches the reflected border.  That
    is exactly our 'valid' region, so the two agree to floating-point rounding (1e-10),
    not merely to a few 1e-4 as a different border rule would give."""
    hr = sample_image("astronaut", (96, 80))
    sr = sample_image("astronaut", (24, 20))
    sr = np.asarray(cv2.resize(sr, (96, 80), interpolation=cv2.INTER_CUBIC))
    x, y = luminance(sr), luminance(hr)
    reference = structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert score(sr, hr).ssim == pytest.approx(reference, abs=1e-10)


def test_rgb_protocol_crops_the_scale_border() -> None:
    hr = sample_image("astronaut", (48, 40)).astype(np.float64)
    sr = hr.copy()
    sr[:4] = 0  # damage confined to the 4-pixel border is not measured
    sr[:, -4:] = 255
    result = score(sr, hr, "rgb")
    assert result.psnr == math.inf
    assert result.ssim == pytest.approx(1.0)
    assert score(sr, hr, "ttsr").psnr < 30


def test_rgb_protocol_averages_channel_ssim() -> None:
    hr = sample_image("astronaut", (48, 40)).astype(np.float64)
    sr = hr.copy()
    sr[10:30, 10:30, 1] = 0
    inner = (slice(4, -4), slice(4, -4))
    expected = np.mean([ssim(sr[inner][..., c], hr[inner][..., c]) for c in range(3)])
    assert score(sr, hr, "rgb").ssim == pytest.approx(expected)
    mse = np.mean(((sr - hr)[inner] / 255) ** 2)
    assert score(sr, hr, "rgb").psnr == pytest.approx(-10 * math.log10(mse))


def test_too_small_or_wrong_inputs_are_refused() -> None:
    with pytest.raises(InputError, match="11x11"):
        score(flat(1, 10), flat(1, 10))
    with pytest.raises(InputError, match="11x11"):
        score(flat(1, 16), flat(1, 16), "rgb")  # 8x8 left after the border
    with pytest.raises(ValueError, match="protocol"):
        score(flat(1), flat(1), "bt709")
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        score(np.zeros((32, 32)), flat(1))
