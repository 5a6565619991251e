"""Training pairs: (LR, LR-up, HR, Ref, Ref-down-up), prepared as the original trainer does.

Two sources:

* **CUFED layout** (``train/input`` + ``train/ref``, paired by sorted file name, as the
  original): HR is the whole input image, the reference is zero-padded to the patch size.
* **Folders of photos** (one or several): pairs are synthesised on the fly.  HR is a random
  crop; the reference is, by share:

  - a crop of the same photo within half a patch of it (so the true texture is there to be
    found), either unwarped or at a random scale and rotation (as real references are);
  - the LR crop's own bicubic upsampling (what ``ttsr upscale`` uses when no reference is
    given), so the network learns that a blurred reference carries no texture worth copying;
  - a crop of another photo, so it also learns to rely on soft attention when nothing matches.

  A warped crop also gets a random exposure (gain and gamma), as a second photo of the same
  scene has: the network must borrow its texture, not its brightness.

Every random choice of sample ``k`` derives from ``(seed, k)`` alone, so a run resumed from a
checkpoint, or split over several processes, draws exactly the samples an uninterrupted
single-process run would.

Augmentation: flips and 90-degree rotations.  The original draws them independently for the
LR/HR pair and for the reference, as CUFED's references are other photos; so does the CUFED
layout here, and so does a reference from another photo.  A reference cut from the same photo
(and the self-reference) keeps the pair's orientation, as a photo of the same scene is upright
like the input: independently turned, its texture would match the LR's only one time in
eight, and the network would learn to distrust it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ttsr_cli.archs.ttsr.model import SCALE
from ttsr_cli.errors import TTSRError
from ttsr_cli.imageio import read_rgb
from ttsr_cli.pixels import resize_bicubic

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
#: Shares of synthesised pairs whose reference is another photo, the LR itself upsampled, or
#: an unwarped crop of the same photo; the rest are warped crops of the same photo.
OTHER_PHOTO_SHARE = 0.1
SELF_REFERENCE_SHARE = 0.15
UNWARPED_SHARE = 0.35
MAX_ROTATION_DEG = 20.0
SCALE_RANGE = (0.8, 1.25)
#: Exposure of a warped reference: gain and gamma, each log-uniform in this range.
EXPOSURE_RANGE = (0.8, 1.25)


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def is_cufed_layout(root: Path) -> bool:
    return (root / "train" / "input").is_dir() and (root / "train" / "ref").is_dir()


@dataclass
class Sample:
    """One training example as uint8 ``[H, W, 3]`` arrays."""

    lr: np.ndarray
    lrsr: np.ndarray
    hr: np.ndarray
    ref: np.ndarray
    refsr: np.ndarray


class PairDataset(torch.utils.data.Dataset):
    """Training samples ``k = 0, 1, 2, ...``; ``len`` is one epoch (one sample per image)."""

    def __init__(self, roots: Path | Sequence[Path], patch_size: int, seed: int) -> None:
        if patch_size % SCALE or patch_size < 4 * SCALE:
            raise TTSRError(f"--patch-size must be a multiple of {SCALE} and at least 16")
        roots = [roots] if isinstance(roots, Path) else list(roots)
        self.patch, self.seed = patch_size, seed
        self.cufed = any(is_cufed_layout(r) for r in roots)
        if self.cufed and len(roots) > 1:
            raise TTSRError("a CUFED tree is used alone: give one --data for it")
        root = roots[0]
        if self.cufed:
            self.inputs = list_images(root / "train" / "input")
            self.refs = list_images(root / "train" / "ref")
            if len(self.inputs) != len(self.refs):
                raise TTSRError(
                    f"{root}: train/input has {len(self.inputs)} images but train/ref "
                    f"has {len(self.refs)}"
                )
        else:
            self.inputs = []
            for folder in roots:
                found = list_images(folder) if folder.is_dir() else []
                if not found:
                    raise TTSRError(
                        f"{folder}: no training images (a CUFED tree or a folder of photos)"
                    )
                self.inputs += found
        self._photos: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def layout(self) -> str:
        return "cufed" if self.cufed else "photos"

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, k])
        epoch, position = divmod(k, len(self))
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(self))
        index = int(order[position])
        if self.cufed:
            sample, upright = self._cufed(index), False
        else:
            sample, upright = self._synthesise(index, rng)
        return to_tensors(augment(sample, rng, upright))

    def _photo(self, index: int) -> np.ndarray:
        """Decoded photos are kept: the folders this mode is for fit in memory."""
        if index not in self._photos:
            self._photos[index] = read_rgb(self.inputs[index])
        return self._photos[index]

    def _cufed(self, index: int) -> Sample:
        hr = read_rgb(self.inputs[index])
        h, w = hr.shape[0] // SCALE * SCALE, hr.shape[1] // SCALE * SCALE
        hr = hr[:h, :w]
        ref = read_rgb(self.refs[index])[: self.patch, : self.patch]
        return _degrade(hr, ref, pad_to=self.patch)

    def _synthesise(self, index: int, rng: np.random.Generator) -> tuple[Sample, bool]:
        """A pair cut from photo ``index`` and its reference; True when the reference comes
        from the same photo (and so shares the pair's orientation)."""
        photo = self._photo(index)
        p = self.patch
        if min(photo.shape[:2]) < p:
            raise TTSRError(f"{self.inputs[index]}: smaller than the {p} px training patch")
        y = int(rng.integers(0, photo.shape[0] - p + 1))
        x = int(rng.integers(0, photo.shape[1] - p + 1))
        hr = photo[y : y + p, x : x + p]
        kind = rng.random()
        if kind < SELF_REFERENCE_SHARE:
            return _degrade(hr, None, pad_to=p), True
        kind -= SELF_REFERENCE_SHARE
        if len(self) > 1 and kind < OTHER_PHOTO_SHARE:
            other = (index + 1 + int(rng.integers(0, len(self) - 1))) % len(self)
            return _degrade(hr, _warped_crop(self._photo(other), None, p, rng), pad_to=p), False
        warp = kind >= OTHER_PHOTO_SHARE + UNWARPED_SHARE
        ref = _warped_crop(photo, (y + p / 2, x + p / 2), p, rng, warp)
        if warp:
            ref = _exposure(ref, rng)
        return _degrade(hr, ref, pad_to=p), True


def _warped_crop(
    photo: np.ndarray,
    near: tuple[float, float] | None,
    size: int,
    rng: np.random.Generator,
    warp: bool = True,
) -> np.ndarray:
    """A ``size`` x ``size`` view of ``photo`` (at a random scale and rotation when ``warp``),
    centred within half a patch of ``near`` (anywhere when ``near`` is None)."""
    h, w = photo.shape[:2]
    if warp:
        scale = math.exp(rng.uniform(math.log(SCALE_RANGE[0]), math.log(SCALE_RANGE[1])))
        angle = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    else:
        scale, angle = 1.0, 0.0
    half = size * scale / 2
    if near is None:
        cy, cx = rng.uniform(half, max(half, h - half)), rng.uniform(half, max(half, w - half))
    else:
        cy = float(np.clip(near[0] + rng.uniform(-0.5, 0.5) * size, half, max(half, h - half)))
        cx = float(np.clip(near[1] + rng.uniform(-0.5, 0.5) * size, half, max(half, w - half)))
    # Output pixel (u, v) samples photo at centre + scale * R(angle) (u - size/2, v - size/2).
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    ox, oy = size / 2, size / 2
    coeffs = (cos, -sin, cx - cos * ox + sin * oy, sin, cos, cy - sin * ox - cos * oy)
    image = Image.fromarray(photo).transform(
        (size, size), Image.AFFINE, coeffs, resample=Image.BICUBIC, fillcolor=(0, 0, 0)
    )
    return np.asarray(image)


def _exposure(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` as if shot at another exposure: a random gain and gamma on [0, 1] values."""
    low, high = math.log(EXPOSURE_RANGE[0]), math.log(EXPOSURE_RANGE[1])
    gain, gamma = np.exp(rng.uniform(low, high, size=2))
    values = np.clip(gain * (image / 255.0) ** gamma, 0.0, 1.0)
    return np.round(values * 255.0).astype(np.uint8)


def _degrade(hr: np.ndarray, ref: np.ndarray | None, pad_to: int) -> Sample:
    """LR, LR-up and Ref-down-up made with Pillow bicubic on uint8, as the original does; the
    reference is zero-padded to ``pad_to`` so samples batch together (as the original).
    ``ref=None`` makes the LR-up its own reference, as ``ttsr upscale`` does without one."""
    h, w = hr.shape[:2]
    lr = resize_bicubic(hr, w // SCALE, h // SCALE)
    lrsr = resize_bicubic(lr, w, h)
    if ref is None:
        ref = lrsr
    rh, rw = ref.shape[0] // SCALE * SCALE, ref.shape[1] // SCALE * SCALE
    ref = ref[:rh, :rw]
    refsr = resize_bicubic(resize_bicubic(ref, rw // SCALE, rh // SCALE), rw, rh)
    padded_ref = np.zeros((pad_to, pad_to, 3), np.uint8)
    padded_refsr = np.zeros((pad_to, pad_to, 3), np.uint8)
    padded_ref[:rh, :rw] = ref
    padded_refsr[:rh, :rw] = refsr
    return Sample(lr=lr, lrsr=lrsr, hr=hr, ref=padded_ref, refsr=padded_refsr)


def augment(sample: Sample, rng: np.random.Generator, upright: bool = False) -> Sample:
    """Random 90-degree rotations and flips of (LR, LR-up, HR), and of Ref: the pair's when
    ``upright``, drawn separately otherwise (the same draws are made either way)."""
    k_pair, k_ref = int(rng.integers(0, 4)), int(rng.integers(0, 4))
    flips = rng.integers(0, 2, size=4)
    if upright:
        k_ref, flips[1], flips[3] = k_pair, flips[0], flips[2]

    def pair(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k_pair)
        a = np.fliplr(a) if flips[0] else a
        return np.flipud(a) if flips[2] else a

    def reference(a: np.ndarray) -> np.ndarray:
        a = np.rot90(a, k_ref)
        a = np.fliplr(a) if flips[1] else a
        return np.flipud(a) if flips[3] else a

    return Sample(
        lr=pair(sample.lr),
        lrsr=pair(sample.lrsr),
        hr=pair(sample.hr),
        ref=reference(sample.ref),
        refsr=reference(sample.refsr),
    )


def to_tensors(sample: Sample) -> dict[str, torch.Tensor]:
    """uint8 arrays -> float32 ``[3, H, W]`` tensors in [-1, 1]."""

    def convert(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 127.5 - 1.0

    return {name: convert(getattr(sample, name)) for name in ("lr", "lrsr", "hr", "ref", "refsr")}
