"""RL-Restore's mixed degradation: Gaussian blur, then Gaussian noise, then JPEG.

A port of the authors' MATLAB recipe (Yu et al., CVPR 2018, ``yuke93/RL-Restore``:
``data/train/generate_train.m`` and ``noise_combination.m``), so that the restoration
networks are trained and evaluated on the distortions their published numbers assume.  It is
the one module both training (degraded patches; the paper trains on ``moderate`` only) and
``ttsr evaluate --degrade`` use, so it is deterministic given a seed and takes any image size.

Each distortion has levels 1..10.  Level ``l`` draws, uniformly:

- blur: Gaussian sigma in [0.5(l-1), 0.5l], ``imfilter(I, fspecial('gaussian', 21, sigma),
  'replicate')`` on float RGB in [0, 1];
- noise: sigma (0-255 scale) in [5(l-1), 5l], ``imnoise(I, 'gaussian', 0, (sigma/255)^2)``,
  i.e. ``I + sigma/255 * randn`` clipped to [0, 1];
- JPEG: quality between ``q(l+1)`` and ``q(l)``, ``q = 100, 80, 60, 50, 40, ..., 10``,
  written by ``imwrite`` and read back.

The level triple (blur, noise, jpeg) is drawn uniformly from every ordered triple whose sum
minus 2 lies in the severity's range (:data:`LEVEL_SUMS`).

Random numbers are drawn in MATLAB's order: triple row, blur sigma, noise sigma, the noise
field, JPEG quality (:func:`draw`).  MATLAB's random stream cannot be reproduced, only this
order and the distributions, so results match the authors' in distribution, not pixel for
pixel.  :func:`apply` is pure (the noise field is an argument), so a recorded
:class:`Degradation` plus its field replays exactly.

Choices where MATLAB is silent or ill-defined:

- JPEG quality: libjpeg's ``jpeg_set_quality`` takes an integer, so the fractional quality the
  script passes must become one; we round to the nearest integer (half up).  Truncation is the
  other plausible reading; the two differ by one quality step at most.  Chroma is subsampled
  4:2:0: that is libjpeg's default for colour images, and MATLAB's ``imwrite`` offers no
  subsampling option, so it writes libjpeg's default.  Encoding and decoding happen in memory
  with Pillow (libjpeg-turbo, baseline, integer DCT); another libjpeg build may differ by a
  level in a few pixels.
- Blur sigma near 0 (level 1 can draw it): ``fspecial`` would divide 0 by 0.  MATLAB's own
  kernel is already the identity for every sigma below ~0.118 (all off-centre taps fall
  under its ``eps * max`` threshold), so sigma below :data:`MIN_SIGMA` gets that identity
  kernel, the limit of the formula, instead of NaNs.
"""

from __future__ import annotations

import io
import itertools
import math
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from PIL import Image

from ttsr_cli.errors import InputError, TTSRError

LEVELS = ("mild", "moderate", "severe")
#: The three distortions, in the recipe's order (and the toolbox's: tools 1-4, 5-8, 9-12).
DISTORTIONS = ("blur", "noise", "jpeg")
#: Inclusive range of ``blur + noise + jpeg - 2`` per severity (``generate_train.m``).
LEVEL_SUMS = {"mild": (9, 11), "moderate": (12, 17), "severe": (18, 20)}
#: Levels per distortion.
NUM_LEVELS = 10
#: Level ``l`` draws uniformly between entries ``l - 1`` and ``l`` of these (1-based ``l``).
BLUR_SIGMAS = tuple(0.5 * k for k in range(NUM_LEVELS + 1))
NOISE_SIGMAS = tuple(5.0 * k for k in range(NUM_LEVELS + 1))
JPEG_QUALITIES = (100.0, 80.0, 60.0, 50.0, 40.0, 35.0, 30.0, 25.0, 20.0, 15.0, 10.0)
#: ``fspecial('gaussian', 21, sigma)``: the window of the authors' blur.
KERNEL_SIZE = 21
#: Blur sigmas below this get the identity kernel (see the module docstring).
MIN_SIGMA = 1e-6


@dataclass(frozen=True)
class Degradation:
    """The parameters one image was degraded with: what a report records to say exactly
    which distortion an evaluation score was measured on."""

    blur_sigma: float
    noise_sigma: float  # on the 0-255 scale, as the paper states it
    jpeg_quality: float  # as drawn (fractional); the encoder gets ``encoder_quality``
    levels: tuple[int, int, int]  # (blur, noise, jpeg), each 1..10

    @property
    def encoder_quality(self) -> int:
        """The integer quality libjpeg is given (:func:`encoder_quality`)."""
        return encoder_quality(self.jpeg_quality)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON types, for reports and training logs."""
        return {
            "blur_sigma": self.blur_sigma,
            "noise_sigma": self.noise_sigma,
            "jpeg_quality": self.jpeg_quality,
            "encoder_quality": self.encoder_quality,
            "levels": list(self.levels),
        }


def encoder_quality(quality: float) -> int:
    """The integer quality libjpeg is given: the drawn one rounded half up."""
    return math.floor(quality + 0.5)


@cache
def level_triples(level: str) -> tuple[tuple[int, int, int], ...]:
    """Every (blur, noise, jpeg) level triple of a severity, lexicographic.

    The same set as ``noise_combination.m`` (which lists each multiset's permutations
    together); the order differs, which changes nothing since a row is drawn uniformly.
    """
    low, high = _level_sum_range(level)
    levels = range(1, NUM_LEVELS + 1)
    return tuple(t for t in itertools.product(levels, repeat=3) if low <= sum(t) - 2 <= high)


def _level_sum_range(level: str) -> tuple[int, int]:
    if level not in LEVEL_SUMS:
        raise TTSRError(f"unknown degradation level {level!r}: use mild, moderate or severe")
    return LEVEL_SUMS[level]


def draw(
    rng: np.random.Generator, level: str, shape: tuple[int, ...]
) -> tuple[Degradation, np.ndarray]:
    """All the random numbers of one degradation of an image of ``shape``, in MATLAB's order:
    triple row, blur sigma, noise sigma, the standard-normal noise field, JPEG quality.

    One ``rng.random()`` per scalar.  The row is ``floor(u * N)``, the 0-based form of the
    script's ``ceil(rand * N)``.
    """
    triples = level_triples(level)
    levels = triples[int(rng.random() * len(triples))]
    blur_sigma = _uniform(rng, BLUR_SIGMAS, levels[0])
    noise_sigma = _uniform(rng, NOISE_SIGMAS, levels[1])
    noise = rng.standard_normal(shape)
    quality = _uniform(rng, JPEG_QUALITIES, levels[2])
    return Degradation(blur_sigma, noise_sigma, quality, levels), noise


def _uniform(rng: np.random.Generator, edges: tuple[float, ...], level: int) -> float:
    """``edges(l) + rand * (edges(l+1) - edges(l))`` in the script's 1-based indexing."""
    return edges[level - 1] + rng.random() * (edges[level] - edges[level - 1])


def gaussian_kernel(sigma: float, size: int = KERNEL_SIZE) -> np.ndarray:
    """MATLAB's ``fspecial('gaussian', size, sigma)``: taps under ``eps`` times the peak are
    zeroed, then the kernel is normalised to sum 1.  Sigma below :data:`MIN_SIGMA` gives the
    identity kernel, the formula's limit, where MATLAB would divide 0 by 0."""
    if sigma < MIN_SIGMA:
        kernel = np.zeros((size, size))
        kernel[size // 2, size // 2] = 1.0
        return kernel
    x = np.arange(size) - (size - 1) / 2
    xx, yy = np.meshgrid(x, x)
    kernel = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    kernel[kernel < np.finfo(np.float64).eps * kernel.max()] = 0
    return kernel / kernel.sum()


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``imfilter(image, fspecial('gaussian', 21, sigma), 'replicate')`` on float64 RGB.

    Separable, with the kernel's centre row as the 1-D taps: five times faster than the 2-D
    correlation on large images.  The outer product of that row differs from MATLAB's 2-D
    kernel only in taps MATLAB zeroes for being under ``eps`` times the peak, so the result
    agrees to ~1e-15.  OpenCV's ``BORDER_REPLICATE`` is MATLAB's ``'replicate'``.
    """
    row = gaussian_kernel(sigma)[KERNEL_SIZE // 2]
    taps = row / row.sum()
    return cv2.sepFilter2D(image, cv2.CV_64F, taps, taps, borderType=cv2.BORDER_REPLICATE)


def add_noise(image: np.ndarray, sigma: float, noise: np.ndarray) -> np.ndarray:
    """``imnoise(image, 'gaussian', 0, (sigma/255)^2)`` with the standard-normal field
    ``noise`` given, so the caller owns the random stream: add, then clip to [0, 1]."""
    return np.clip(image + (sigma / 255.0) * noise, 0.0, 1.0)


def to_u8(image: np.ndarray) -> np.ndarray:
    """Float in [0, 1] -> uint8 as ``im2uint8`` does it: clip, then ``255 * x`` rounded half up."""
    return np.floor(np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """``imwrite(image, 'x.jpg', 'Quality', quality)`` then ``imread``, in memory: uint8 RGB.

    The float image becomes 8-bit by :func:`to_u8`; chroma is subsampled 4:2:0 as MATLAB's
    writer does.
    """
    buffer = io.BytesIO()
    Image.fromarray(to_u8(image), "RGB").save(buffer, format="JPEG", quality=quality, subsampling=2)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def apply(image: np.ndarray, d: Degradation, noise: np.ndarray) -> np.ndarray:
    """Degrade ``image`` with the parameters ``d`` and the standard-normal field ``noise``
    (``image``'s shape): float32 RGB in [0, 1], on the 1/255 grid the JPEG leaves.

    ``image`` is RGB ``[H, W, 3]``, uint8 or float in [0, 1].  Pure: replaying a recorded
    degradation needs no generator.
    """
    return _apply_u8(image, d, noise).astype(np.float32) / np.float32(255.0)


def _apply_u8(image: np.ndarray, d: Degradation, noise: np.ndarray) -> np.ndarray:
    pixels = _as_float(image)
    if noise.shape != pixels.shape:
        raise InputError(
            f"noise field of shape {noise.shape} does not match the image's {pixels.shape}"
        )
    noisy = add_noise(blur(pixels, d.blur_sigma), d.noise_sigma, noise)
    return jpeg_round_trip(noisy, d.encoder_quality)


def _as_float(image: np.ndarray) -> np.ndarray:
    """uint8 or float RGB -> contiguous float64 in [0, 1] (``im2double``); MATLAB computes the
    whole recipe in double, so do we."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"degradation needs an RGB image [H, W, 3], got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if np.issubdtype(image.dtype, np.floating):
        return np.ascontiguousarray(image, dtype=np.float64)
    raise InputError(f"degradation needs a uint8 or float image, got {image.dtype}")


def degrade_one(
    image: np.ndarray, distortion: str, level: int, rng: np.random.Generator
) -> np.ndarray:
    """``image`` with one distortion of :data:`DISTORTIONS` alone, its parameter drawn
    uniformly within ``level`` (1..10) as :func:`draw` draws it: float32 RGB on the 1/255 grid.

    This is how each of RL-Restore's tools sees its training data: one distortion in its
    band.  Blur and noise alone are stored as 8-bit as the JPEG path is (:func:`to_u8`), so
    every training input lies on the grid a saved image has.
    """
    pixels = _as_float(image)
    if distortion == "blur":
        out = to_u8(blur(pixels, _uniform(rng, BLUR_SIGMAS, level)))
    elif distortion == "noise":
        sigma = _uniform(rng, NOISE_SIGMAS, level)
        out = to_u8(add_noise(pixels, sigma, rng.standard_normal(pixels.shape)))
    elif distortion == "jpeg":
        quality = _uniform(rng, JPEG_QUALITIES, level)
        out = jpeg_round_trip(pixels, encoder_quality(quality))
    else:
        raise TTSRError(f"unknown distortion {distortion!r}: use {', '.join(DISTORTIONS)}")
    return out.astype(np.float32) / np.float32(255.0)


def degrade(
    image: np.ndarray, level: str, rng: np.random.Generator
) -> tuple[np.ndarray, Degradation]:
    """The whole recipe for one image at severity ``level``: float32 RGB on the 1/255 grid,
    and the parameters drawn (see :func:`draw` for the order)."""
    d, noise = draw(rng, level, image.shape)
    return apply(image, d, noise), d


def degrade_u8(
    image: np.ndarray, level: str, seed: int, index: int
) -> tuple[np.ndarray, Degradation]:
    """Image ``index`` of an evaluation set degraded with a generator seeded by
    ``(seed, index)``: uint8 RGB and the parameters.

    Seeding per image makes image ``k``'s input the same whichever other images are
    evaluated, in whatever order or number of workers.
    """
    d, noise = draw(np.random.default_rng([seed, index]), level, image.shape)
    return _apply_u8(image, d, noise), d
