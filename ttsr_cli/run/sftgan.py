"""Running SFT-GAN on image arrays: the segmentation network makes the priors, the generator
upscales x4 under them.

The official pipeline, from an LR image: OutdoorSceneSeg sees the LR up-sampled x4 with
MATLAB's bicubic (:mod:`ttsr_cli.imresize`), in BGR, on the 0..255 scale, less the Caffe
means; its 8 class probabilities, at the output size and unnormalised, are the generator's
condition; the generator sees the LR in RGB on [0, 1].  An LR with an odd side, which the
official code cannot run (the segmentation's size would not be 4x the LR's), is mirrored at
the bottom and right to even sides, run, and the result cropped to exactly 4x the input.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ttsr_cli.archs.descriptor import Descriptor
from ttsr_cli.archs.sftgan import CLASSES
from ttsr_cli.errors import InputError, TTSRError
from ttsr_cli.imresize import imresize
from ttsr_cli.pixels import bit_depth, pad_to_multiple, to_image
from ttsr_cli.priors import PALETTE
from ttsr_cli.run.common import Runner, Upscaled, autocast

#: What the segmentation network's input has subtracted, per BGR channel (0..255 scale).
CAFFE_MEANS_BGR = (103.939, 116.779, 123.68)


class SFTGANRunner(Runner):
    """A generator and the segmentation network that makes its priors, on arrays (uint8 or
    uint16 ``[H, W, 3]``; the same type out)."""

    def __init__(
        self,
        model: nn.Module,
        descriptor: Descriptor,
        segmentation: nn.Module | None,
        device: torch.device,
        precision: torch.dtype = torch.float32,
    ) -> None:
        self.model = model.to(device).eval()
        self.segmentation = None if segmentation is None else segmentation.to(device).eval()
        self.descriptor, self.device, self.precision = descriptor, device, precision

    @torch.inference_mode()
    def upscale_detailed(self, lr: np.ndarray, references: object = None) -> Upscaled:
        """x4 of ``lr`` under its segmentation priors; ``mode["classes"]`` gives each class's
        share of the output's pixels (by arg-max).  ``references``: SFT-GAN searches none, but
        takes given priors there (``--seg-maps``: float ``[8, 4H, 4W]``), which replace the
        segmentation network's."""
        if references is not None and not isinstance(references, np.ndarray):
            raise TTSRError("SFT-GAN takes no reference image (its priors come from the image)")
        h, w = lr.shape[:2]
        top = 65535.0 if bit_depth(lr) == 16 else 255.0
        multiple = self.descriptor.size_multiple
        rgb = pad_to_multiple(lr, multiple).astype(np.float64) / top
        if references is None:
            priors = self.priors(rgb)
        else:
            given = pad_to_multiple(references.transpose(1, 2, 0), multiple * self.descriptor.scale)
            priors = torch.from_numpy(np.ascontiguousarray(given.transpose(2, 0, 1))[None])
            priors = priors.to(self.device)
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))[None]).float()
        with autocast(self.device, self.precision):
            sr = self.model(x.to(self.device), priors).float()
        scale = self.descriptor.scale
        sr, priors = sr[..., : h * scale, : w * scale], priors[..., : h * scale, : w * scale]
        image = to_image(sr, bit_depth(lr), signed=False)
        mode = {"classes": shares(priors)}
        return Upscaled(image, 1, mode, priors=priors[0].cpu().numpy())

    def priors(self, rgb: np.ndarray) -> torch.Tensor:
        """``[1, 8, 4H, 4W]`` class probabilities of ``rgb`` (``[H, W, 3]`` on [0, 1])."""
        if self.segmentation is None:
            raise InputError(
                "no priors for this image: give --seg-weights (the segmentation network) or a "
                "map in --seg-maps"
            )
        bgr = imresize(rgb[..., ::-1], self.descriptor.scale) * 255 - CAFFE_MEANS_BGR
        x = torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1))[None]).float()
        with autocast(self.device, self.precision):
            return self.segmentation(x.to(self.device)).float()


def shares(priors: torch.Tensor) -> dict[str, float]:
    """Each class's share of the pixels, by arg-max of the probabilities (rounded to 1e-4)."""
    counts = torch.bincount(priors[0].argmax(0).flatten(), minlength=len(CLASSES))
    total = float(counts.sum())
    return {name: round(float(n) / total, 4) for name, n in zip(CLASSES, counts, strict=True)}


def prior_pictures(priors: np.ndarray) -> dict[str, np.ndarray]:
    """What ``--save-priors`` writes, by name: ``segmentation`` (the arg-max in the official
    palette) and ``prob_CLASS`` (each class's probability, 0 black to 1 white)."""
    pictures = {"segmentation": np.asarray(PALETTE, dtype=np.uint8)[priors.argmax(0)]}
    for name, plane in zip(CLASSES, priors, strict=True):
        grey = np.clip(np.rint(plane * 255), 0, 255).astype(np.uint8)
        pictures[f"prob_{name}"] = np.repeat(grey[..., None], 3, axis=2)
    return pictures
