"""Image arrays -> tensors -> TTSR -> image arrays, with the original's test-time preprocessing.

The original prepares ``lrsr`` (LR up x4) and ``refsr`` (Ref down x4, up x4) with Pillow's
bicubic filter on uint8 images, not with torch interpolation; matching its pixels requires the
same.  16-bit images take the same Pillow bicubic kernel on float32 planes instead, so their
extra precision is not rounded away before the network sees it.  References are encoded once
and can be reused for any number of LR images (:class:`ReferenceCache` shares them by path).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ttsr_cli.errors import InputError, TTSRError
from ttsr_cli.imageio import ImageData, output_format, read_image, write_image
from ttsr_cli.nn import TTSR
from ttsr_cli.nn.ttsr import ReferenceFeatures

SCALE = 4
_UINT16_MAX = 65535


def resize_bicubic(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pillow bicubic resize, as the original's data pipeline does.

    8-bit arrays go through Pillow's 8-bit filter unchanged (bit-exact with the original).
    16-bit arrays are resized plane by plane in Pillow's float mode ("F", the same bicubic
    kernel) and rounded back to 16 bits: Pillow has no 16-bit colour mode, and its 8-bit one
    would throw away the precision a 16-bit file was saved for.
    """
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize((width, height), Image.BICUBIC))
    planes = array[..., None] if array.ndim == 2 else array
    resized = [_resize_float(planes[..., c], width, height) for c in range(planes.shape[2])]
    out = np.clip(np.rint(np.stack(resized, axis=-1)), 0, _UINT16_MAX).astype(np.uint16)
    return out if array.ndim == 3 else out[..., 0]


def _resize_float(plane: np.ndarray, width: int, height: int) -> np.ndarray:
    image = Image.fromarray(plane.astype(np.float32))  # mode "F"
    return np.asarray(image.resize((width, height), Image.BICUBIC))


def to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``[H, W, 3]`` uint8 or uint16 -> ``[1, 3, H, W]`` float32 in [-1, 1]."""
    if array.dtype == np.uint16:  # torch has few uint16 kernels: scale in numpy
        t = torch.from_numpy(array.astype(np.float32) / 32767.5 - 1.0).to(device)
        return t.permute(2, 0, 1).unsqueeze(0)
    t = torch.from_numpy(array.copy()).to(device)  # copy: decoded images may be read-only
    return t.permute(2, 0, 1).unsqueeze(0).float() / 127.5 - 1.0


def to_image(tensor: torch.Tensor, bit_depth: int = 8) -> np.ndarray:
    """``[1, 3, H, W]`` in [-1, 1] -> ``[H, W, 3]`` uint8 (rounded like the original) or uint16."""
    if bit_depth == 16:
        t = ((tensor[0].float() + 1.0) * 32767.5).round().clamp(0, _UINT16_MAX)
        return t.permute(1, 2, 0).cpu().numpy().astype(np.uint16)
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

    def __init__(
        self,
        model: TTSR,
        device: torch.device,
        search_budget: int | None = None,
        precision: torch.dtype = torch.float32,
    ) -> None:
        self.model = model.to(device).eval()
        self.device = device
        self.search_budget = search_budget
        self.precision = precision

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Reduced precision through autocast: the weights stay fp32, so ops autocast keeps in
        fp32 (normalisation, reductions) stay accurate, and fp32 runs exactly as before."""
        if self.precision == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    @torch.inference_mode()
    def encode_reference(self, ref: np.ndarray) -> ReferenceFeatures:
        """LTE features of one reference image (8 or 16 bits, any size of at least 4x4)."""
        ref_img, refsr_img = reference_pair(ref)
        with self._autocast():
            return self.model.encode_reference(
                to_tensor(ref_img, self.device), to_tensor(refsr_img, self.device)
            )

    @torch.inference_mode()
    def upscale(
        self, lr: np.ndarray, references: Sequence[ReferenceFeatures] | None = None
    ) -> np.ndarray:
        """x4 super-resolution of ``lr`` (uint8 or uint16 ``[H, W, 3]``; the result has the same
        type).  Without references the image is its own reference (LR up-sampled), as the TTSR
        authors evaluate on Urban100 and Manga109."""
        h, w = lr.shape[:2]
        lrsr = resize_bicubic(lr, w * SCALE, h * SCALE)
        if not references:
            references = [self.encode_reference(lrsr)]
        with self._autocast():
            out = self.model.upscale(
                to_tensor(lr, self.device),
                to_tensor(lrsr, self.device),
                references,
                self.search_budget,
            )
        return to_image(out.sr, 16 if lr.dtype == np.uint16 else 8)

    def upscale_image(
        self, image: ImageData, references: Sequence[ReferenceFeatures] | None = None
    ) -> ImageData:
        """x4 of a decoded file: colour through the network, alpha by bicubic (the network
        knows nothing of transparency); depth, profile and greyness carried over."""
        sr = self.upscale(image.rgb, references)
        alpha = image.alpha
        if alpha is not None:
            alpha = resize_bicubic(alpha, sr.shape[1], sr.shape[0])
        return replace(image, rgb=sr, alpha=alpha)


def load_reference(upscaler: Upscaler, path: Path) -> ReferenceFeatures:
    """Read and encode one reference file; any problem with it is a configuration error."""
    try:
        return upscaler.encode_reference(read_image(path).rgb)
    except InputError as exc:
        detail = str(exc).removeprefix(f"{path}: ")
        raise TTSRError(f"reference {path}: {detail}") from None


class ReferenceCache:
    """Encoded references shared by path across a batch.

    Each reference is read and encoded once; ``uses`` says how many images will ask for it, so
    its features (hundreds of MB for a large reference) are dropped after the last one.  A
    reference that fails to decode fails each image that needs it, as an input error.
    """

    def __init__(self, upscaler: Upscaler, uses: Iterable[Path]) -> None:
        self.upscaler = upscaler
        self.remaining = Counter(uses)
        self._features: dict[Path, ReferenceFeatures | str] = {}

    @contextlib.contextmanager
    def borrow(self, paths: Sequence[Path]) -> Iterator[list[ReferenceFeatures]]:
        """Features of ``paths`` for the duration of one image."""
        try:
            yield [self._get(path) for path in paths]
        finally:
            for path in paths:
                self.remaining[path] -= 1
                if self.remaining[path] <= 0:
                    self._features.pop(path, None)

    def _get(self, path: Path) -> ReferenceFeatures:
        if path not in self._features:
            try:
                self._features[path] = load_reference(self.upscaler, path)
            except TTSRError as exc:
                self._features[path] = str(exc)
        found = self._features[path]
        if isinstance(found, str):
            raise InputError(found)
        return found


def upscale_file(
    upscaler: Upscaler,
    source: Path,
    destination: Path,
    references: Sequence[ReferenceFeatures] | None = None,
    quality: int = 95,
) -> tuple[int, int]:
    """Upscale one image file into ``destination`` (written atomically); returns its size."""
    if destination.resolve() == source.resolve():
        raise InputError(f"{source}: refusing to overwrite the input with its own output")
    output_format(destination)
    sr = upscaler.upscale_image(read_image(source), references)
    write_image(destination, sr, quality)
    return sr.size
