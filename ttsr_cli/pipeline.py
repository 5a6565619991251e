"""Image arrays -> tensors -> TTSR -> image arrays, with the original's test-time preprocessing.

The original prepares ``lrsr`` (LR up x4) and ``refsr`` (Ref down x4, up x4) with Pillow's
bicubic filter on uint8 images, not with torch interpolation; matching its pixels requires the
same.  References are encoded once and can be reused for any number of LR images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ttsr_cli.errors import InputError, TTSRError
from ttsr_cli.imageio import output_format, read_rgb, write_rgb
from ttsr_cli.nn import TTSR
from ttsr_cli.nn.ttsr import ReferenceFeatures

SCALE = 4


def resize_bicubic(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pillow bicubic resize of an 8-bit image, as the original's data pipeline does."""
    return np.asarray(Image.fromarray(array).resize((width, height), Image.BICUBIC))


def to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``[H, W, 3]`` uint8 -> ``[1, 3, H, W]`` float32 in [-1, 1]."""
    t = torch.from_numpy(array.copy()).to(device)  # copy: decoded images may be read-only
    return t.permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1.0


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """``[1, 3, H, W]`` in [-1, 1] -> ``[H, W, 3]`` uint8, rounded like the original."""
    t = ((tensor[0].float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return t.permute(1, 2, 0).cpu().numpy()


def reference_pair(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ref cropped to multiples of 4, and its bicubic down-up version."""
    h, w = (ref.shape[0] // SCALE) * SCALE, (ref.shape[1] // SCALE) * SCALE
    if h == 0 or w == 0:
        raise InputError(
            f"reference is {ref.shape[1]}x{ref.shape[0]}; it must be at least {SCALE}x{SCALE}"
        )
    ref = ref[:h, :w]
    down = resize_bicubic(ref, w // SCALE, h // SCALE)
    return ref, resize_bicubic(down, w, h)


class Upscaler:
    """Runs a TTSR model on images held as arrays, keeping references' features for reuse."""

    def __init__(self, model: TTSR, device: torch.device, search_budget: int | None = None) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.search_budget = search_budget

    @torch.inference_mode()
    def encode_reference(self, ref: np.ndarray) -> ReferenceFeatures:
        """LTE features of one reference image (any size of at least 4x4)."""
        ref_img, refsr_img = reference_pair(ref)
        return self.model.encode_reference(
            to_tensor(ref_img, self.device), to_tensor(refsr_img, self.device)
        )

    @torch.inference_mode()
    def upscale(
        self, lr: np.ndarray, references: Sequence[ReferenceFeatures] | None = None
    ) -> np.ndarray:
        """x4 super-resolution of ``lr``.  Without references the image is its own reference
        (LR up-sampled), as the TTSR authors evaluate on Urban100 and Manga109."""
        h, w = lr.shape[:2]
        lrsr = resize_bicubic(lr, w * SCALE, h * SCALE)
        if not references:
            references = [self.encode_reference(lrsr)]
        out = self.model.upscale(
            to_tensor(lr, self.device),
            to_tensor(lrsr, self.device),
            references,
            self.search_budget,
        )
        return to_image(out.sr)


def load_reference(upscaler: Upscaler, path: Path) -> ReferenceFeatures:
    """Read and encode one reference file; any problem with it is a configuration error."""
    try:
        image = read_rgb(path)
        return upscaler.encode_reference(image)
    except InputError as exc:
        detail = str(exc).removeprefix(f"{path}: ")
        raise TTSRError(f"reference {path}: {detail}") from None


def upscale_file(
    upscaler: Upscaler,
    source: Path,
    destination: Path,
    references: Sequence[ReferenceFeatures] | None = None,
) -> tuple[int, int]:
    """Upscale one image file into ``destination`` (written atomically); returns its size."""
    if destination.resolve() == source.resolve():
        raise InputError(f"{source}: refusing to overwrite the input with its own output")
    output_format(destination)
    sr = upscaler.upscale(read_rgb(source), references)
    write_rgb(destination, sr)
    return sr.shape[1], sr.shape[0]
