"""PSNR and SSIM as TTSR papers report them, and a plain RGB variant.

Published RefSR numbers come from the original TTSR code's metric, which differs from the
usual "Y channel, shave the border" recipe in small ways that move results by ~0.1 dB:
PSNR uses luminance *without* border shave (the +16 offset cancels in a difference), and
SSIM uses a Gaussian-weighted 'valid' window.  ``ttsr`` reproduces that metric exactly so
that our numbers sit in the same table as the paper's.  ``sisr`` is the single-image SR
papers' recipe (EDSR, CSNLN): luminance PSNR with ``scale`` pixels of border cut, and SSIM
on the same region.  ``rgb`` is offered for comparison with papers that measure colour error
instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from ttsr_cli.errors import InputError

PROTOCOLS = ("ttsr", "sisr", "rgb")
#: ITU-R BT.601 RGB -> Y weights for 0..255 input, as in the original (MATLAB rgb2ycbcr).
Y_WEIGHTS = np.array([65.738, 129.057, 25.064]) / 256.0
Y_OFFSET = 16.0
WINDOW = 11
SIGMA = 1.5
C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2


@dataclass(frozen=True)
class Score:
    """PSNR in dB and SSIM in [-1, 1] of one SR image against its ground truth."""

    psnr: float
    ssim: float


def score(sr: np.ndarray, hr: np.ndarray, protocol: str = "ttsr", scale: int = 4) -> Score:
    """Compare two ``[H, W, 3]`` images with values in 0..255 under ``protocol``; ``sisr``
    and ``rgb`` cut a border of ``scale`` pixels (the upscaling factor) at every edge."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r} (use {', '.join(PROTOCOLS)})")
    a, b = quantize_pair(sr, hr)
    if protocol != "ttsr":
        inner = (slice(scale, -scale), slice(scale, -scale))
        a, b = a[inner], b[inner]
    _require_window(a)
    if protocol == "rgb":
        channels = [ssim(a[..., c], b[..., c]) for c in range(3)]
        return Score(psnr_rgb(a, b), float(np.mean(channels)))
    return Score(psnr_y(a, b), ssim(luminance(a), luminance(b)))


def _require_window(image: np.ndarray) -> None:
    """SSIM needs one whole window; refuse rather than return NaN for tiny images."""
    h, w = image.shape[:2]
    if min(h, w) < WINDOW:
        raise InputError(
            f"measured region is {w}x{h}; SSIM needs at least {WINDOW}x{WINDOW} pixels"
        )


def quantize_pair(sr: np.ndarray, hr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images rounded to 8-bit values (float64) and cropped to their common top-left
    region, as the original does before measuring: a model's float output is scored as the
    image a user would save."""
    for label, image in (("SR", sr), ("HR", hr)):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{label} image must be [H, W, 3], got shape {image.shape}")
    h, w = min(sr.shape[0], hr.shape[0]), min(sr.shape[1], hr.shape[1])
    return _quantize(sr[:h, :w]), _quantize(hr[:h, :w])


def _quantize(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image.astype(np.float64)), 0, 255)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Y of ``[H, W, 3]`` RGB in 0..255 (range 16..235), float64."""
    return rgb.astype(np.float64) @ Y_WEIGHTS + Y_OFFSET


def psnr_y(sr: np.ndarray, hr: np.ndarray) -> float:
    """Luminance PSNR with no border shave: the Y difference in [0, 1] units."""
    diff = ((sr - hr) / 255.0) @ Y_WEIGHTS
    return _psnr_from_mse(float(np.mean(diff**2)))


def psnr_rgb(sr: np.ndarray, hr: np.ndarray) -> float:
    """PSNR over all three channels, values in [0, 1] units (computed in float64, so 8-bit
    arrays may be passed as they are: their differences would wrap)."""
    diff = (np.asarray(sr, np.float64) - np.asarray(hr, np.float64)) / 255.0
    return _psnr_from_mse(float(np.mean(diff**2)))


def _psnr_from_mse(mse: float) -> float:
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> np.ndarray:
    """1-D normalised Gaussian taps; the 2-D window is their outer product (separable)."""
    x = np.arange(size) - (size - 1) / 2
    taps = np.exp(-(x**2) / (2 * sigma**2))
    return taps / taps.sum()


def _filter_valid(plane: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable Gaussian correlation kept only where the window lies inside the image (the
    (size - 1) / 2 edge pixels are dropped), so OpenCV's border rule never shows."""
    edge = (len(taps) - 1) // 2
    return cv2.sepFilter2D(plane, cv2.CV_64F, taps, taps)[edge:-edge, edge:-edge]


def ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM of two single-channel images in 0..255 (Gaussian 11x11, sigma 1.5), over the
    'valid' region: the map loses (window - 1) / 2 = 5 pixels at every edge."""
    _require_window(x)
    taps = gaussian_window()
    x, y = x.astype(np.float64), y.astype(np.float64)
    mu_x, mu_y = _filter_valid(x, taps), _filter_valid(y, taps)
    var_x = _filter_valid(x * x, taps) - mu_x**2
    var_y = _filter_valid(y * y, taps) - mu_y**2
    cov = _filter_valid(x * y, taps) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + C1) * (2 * cov + C2)
    denominator = (mu_x**2 + mu_y**2 + C1) * (var_x + var_y + C2)
    return float(np.mean(numerator / denominator))
