"""Training patches for single-image SR (CSNLN), as the EDSR code base the authors trained
with makes them.

Each image's LR is its bicubic down-sampling (HR cropped to a multiple of the scale, Pillow
bicubic on 8-bit pixels: :func:`ttsr_cli.pixels.degrade`), made once.  Sample ``k`` is a
random LR patch and the HR patch above it, augmented with flips and a transpose (each with
probability one half), in [0, 1].  Every random choice derives from ``(seed, k)`` alone, so
resumed and distributed runs draw exactly the samples an uninterrupted single-process run
would.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ttsr_cli.errors import TTSRError
from ttsr_cli.imageio import read_rgb
from ttsr_cli.pixels import degrade
from ttsr_cli.train.pairs import list_images


class PatchDataset(torch.utils.data.Dataset):
    """LR/HR patch pairs ``k = 0, 1, 2, ...``; ``len`` is one epoch (one patch per image).

    ``patch_size`` is the HR patch side (a multiple of ``scale``), as ``--patch-size`` is
    for every family.
    """

    def __init__(
        self, roots: Path | Sequence[Path], patch_size: int, scale: int, seed: int
    ) -> None:
        if patch_size % scale or patch_size < 2 * scale:
            raise TTSRError(
                f"--patch-size {patch_size} must be a multiple of the scale ({scale}) and at "
                f"least {2 * scale}"
            )
        self.patch, self.scale, self.seed = patch_size, scale, seed
        self.inputs: list[Path] = []
        for folder in [roots] if isinstance(roots, Path) else list(roots):
            found = list_images(folder) if folder.is_dir() else []
            if not found:
                raise TTSRError(f"{folder}: no training images (a folder of photos)")
            self.inputs += found
        self._pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        index, rng = self.draw(k)
        hr, lr = self._pair(index)
        side = self.patch // self.scale
        y = int(rng.integers(0, lr.shape[0] - side + 1))
        x = int(rng.integers(0, lr.shape[1] - side + 1))
        lr_patch = lr[y : y + side, x : x + side]
        s = self.scale
        hr_patch = hr[y * s : (y + side) * s, x * s : (x + side) * s]
        flips = rng.integers(0, 2, size=3)
        return {
            "lr": chw_tensor(augment(lr_patch, flips)),
            "hr": chw_tensor(augment(hr_patch, flips)),
        }

    def draw(self, k: int) -> tuple[int, np.random.Generator]:
        """Sample ``k``'s image (each epoch visits every image once, in an order drawn from
        the seed and the epoch) and the generator of its other random choices."""
        epoch, position = divmod(k, len(self))
        order = np.random.default_rng([self.seed, epoch, 1]).permutation(len(self))
        return int(order[position]), np.random.default_rng([self.seed, k])

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """HR and LR of one image, made once: the folders this is for fit in memory."""
        if index not in self._pairs:
            hr, lr, _ = degrade(read_rgb(self.inputs[index]), self.scale)
            if min(lr.shape[:2]) * self.scale < self.patch:
                raise TTSRError(
                    f"{self.inputs[index]}: smaller than the {self.patch} px training patch"
                )
            self._pairs[index] = (hr, lr)
        return self._pairs[index]


def augment(patch: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Horizontal flip, vertical flip, transpose: EDSR's augmentation."""
    if flips[0]:
        patch = patch[:, ::-1]
    if flips[1]:
        patch = patch[::-1, :]
    if flips[2]:
        patch = patch.transpose(1, 0, 2)
    return patch


def chw_tensor(patch: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]`` in [0, 1] (CSNLN's ``rgb_range`` 1)."""
    return torch.from_numpy(patch.copy()).permute(2, 0, 1).float().mul_(1 / 255)
