"""Image arrays <-> tensors, and resizes exactly as the original codes do them.

The originals prepare their inputs with Pillow's bicubic filter on uint8 images (TTSR's
``lrsr`` and ``refsr``, every benchmark's LR), not with torch interpolation; matching their
pixels requires the same.  16-bit images take the same Pillow kernel on float32 planes, so
their extra precision is not rounded away before the network sees it.

Families differ in their value range: TTSR works in [-1, 1] (``signed``), CSNLN in [0, 1]
(its ``rgb_range`` 1); each conversion here follows the original's arithmetic to the bit.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ttsr_cli.errors import InputError

_UINT16_MAX = 65535


def resize_bicubic(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pillow bicubic resize, as the originals' data pipelines do (see :func:`resize`)."""
    return resize(array, width, height, Image.BICUBIC)


def resize(array: np.ndarray, width: int, height: int, resample: int) -> np.ndarray:
    """Pillow resize with filter ``resample``.

    8-bit arrays go through Pillow's 8-bit filter unchanged (bit-exact with the originals).
    16-bit arrays are resized plane by plane in Pillow's float mode ("F", the same
    kernel) and rounded back to 16 bits: Pillow has no 16-bit colour mode, and its 8-bit one
    would throw away the precision a 16-bit file was saved for.
    """
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize((width, height), resample))
    planes = array[..., None] if array.ndim == 2 else array
    resized = [
        _resize_float(planes[..., c], width, height, resample) for c in range(planes.shape[2])
    ]
    out = np.clip(np.rint(np.stack(resized, axis=-1)), 0, _UINT16_MAX).astype(np.uint16)
    return out if array.ndim == 3 else out[..., 0]


def _resize_float(plane: np.ndarray, width: int, height: int, resample: int) -> np.ndarray:
    image = Image.fromarray(plane.astype(np.float32))  # mode "F"
    return np.asarray(image.resize((width, height), resample))


def to_tensor(array: np.ndarray, device: torch.device, signed: bool = True) -> torch.Tensor:
    """``[H, W, 3]`` uint8 or uint16 -> ``[1, 3, H, W]`` float32 in [-1, 1] (``signed``,
    TTSR's ``x / 127.5 - 1``) or [0, 1] (CSNLN's ``x * (1 / 255)``)."""
    if array.dtype == np.uint16:  # torch has few uint16 kernels: scale in numpy
        scaled = array.astype(np.float32) / (32767.5 if signed else float(_UINT16_MAX))
        t = torch.from_numpy(scaled - 1.0 if signed else scaled).to(device)
        return t.permute(2, 0, 1).unsqueeze(0)
    t = torch.from_numpy(array.copy()).to(device)  # copy: decoded images may be read-only
    t = t.permute(2, 0, 1).unsqueeze(0).float()
    return t / 127.5 - 1.0 if signed else t.mul_(1 / 255)


def to_image(tensor: torch.Tensor, bit_depth: int = 8, signed: bool = True) -> np.ndarray:
    """``[1, 3, H, W]`` -> ``[H, W, 3]`` uint8 or uint16, rounded as the originals round:
    TTSR ``((x + 1) * 127.5).round().clamp``, CSNLN ``(x * 255).clamp(0, 255).round()``
    (half to even both; clamping before or after rounding gives the same integers)."""
    top = _UINT16_MAX if bit_depth == 16 else 255
    t = tensor[0].float()
    t = (t + 1.0) * (top / 2) if signed else t * top
    t = t.round().clamp(0, top)
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    return t.permute(1, 2, 0).cpu().numpy().astype(dtype)


def bit_depth(array: np.ndarray) -> int:
    return 16 if array.dtype == np.uint16 else 8


def reference_pair(ref: np.ndarray, scale: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """TTSR's reference preparation: Ref cropped to multiples of ``scale``, and its bicubic
    down-up version (the key side of the relevance search)."""
    h, w = (ref.shape[0] // scale) * scale, (ref.shape[1] // scale) * scale
    if h == 0 or w == 0:
        raise InputError(
            f"reference is {ref.shape[1]}x{ref.shape[0]}; it must be at least {scale}x{scale}"
        )
    ref = ref[:h, :w]
    down = resize_bicubic(ref, w // scale, h // scale)
    return ref, resize_bicubic(down, w, h)


def degrade(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(hr, lr, bicubic)`` as benchmarks make them: HR cropped top-left to multiples of
    ``scale``, its bicubic down-sampling, and that LR up-sampled back (the baseline every
    model must beat)."""
    h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    if h == 0 or w == 0:
        raise InputError(f"image is {hr.shape[1]}x{hr.shape[0]}; at least {scale}x{scale} needed")
    hr = hr[:h, :w]
    lr = resize_bicubic(hr, w // scale, h // scale)
    return hr, lr, resize_bicubic(lr, w, h)


def final_size(size: tuple[int, int], outscale: float) -> tuple[int, int]:
    """``(width, height)`` of an input of ``size`` at ``outscale`` (at least one pixel)."""
    return tuple(max(1, round(side * outscale)) for side in size)  # type: ignore[return-value]


def pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """``image`` mirrored at the bottom and right up to sides that are multiples of
    ``multiple`` (symmetric padding, so a single-pixel side repeats itself)."""
    h, w = image.shape[:2]
    extra = (-h % multiple, -w % multiple)
    if extra == (0, 0):
        return image
    return np.pad(image, ((0, extra[0]), (0, extra[1]), (0, 0)), mode="symmetric")
