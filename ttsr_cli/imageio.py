"""Reading and writing images faithfully, with every failure turned into one line naming the file.

What a photo carries besides its pixels survives the round trip: the EXIF orientation is
applied on reading, the ICC profile is written back, greyscale stays greyscale, alpha is kept,
16-bit PNG/TIFF stay 16-bit, CMYK and palette images become RGB.  Pillow decodes 16-bit
*colour* only by truncating it to 8 bits, so those files are decoded with OpenCV and written
with OpenCV (PNG, the profile added as an ``iCCP`` chunk) or tifffile (TIFF).
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image, ImageCms, UnidentifiedImageError

from ttsr_cli.atomic import atomic_path
from ttsr_cli.errors import InputError

_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
}
#: Formats that can hold 16 bits per channel, and those that can carry an ICC profile.
_DEEP_FORMATS = ("PNG", "TIFF")
_ICC_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")
_ORIENTATION = 0x0112
_GREY_MODES = ("1", "L", "LA", "La")
_GREY_16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, the weights Pillow's convert("L") uses


@dataclass(frozen=True)
class ImageData:
    """Pixels plus what must survive an upscale.

    ``rgb``: ``[H, W, 3]`` (greyscale is stored as three equal channels, because the network
    takes colour); ``alpha``: ``[H, W]`` or None; both ``uint8`` (``bit_depth`` 8) or
    ``uint16`` (16).  ``greyscale``: write the result back as greyscale.
    ``source_format``: Pillow's name for the file's format (``"PNG"``, ``"JPEG"``...).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    bit_depth: int = 8
    icc_profile: bytes | None = None
    greyscale: bool = False
    source_format: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, as Pillow reports sizes."""
        return self.rgb.shape[1], self.rgb.shape[0]


def read_image(path: Path) -> ImageData:
    """Decode ``path`` with its orientation applied, keeping depth, alpha, profile, greyness."""
    with _decoding_errors(path), Image.open(path) as img:
        deep = _is_deep_colour(img)  # before getexif(), which may decode (and drop the tiles)
        orientation = img.getexif().get(_ORIENTATION, 1)
        if deep:
            data = _decode_deep_colour(path, img)
        else:
            img.load()
            data = _from_pillow(img)
    alpha = None if data.alpha is None else _orient(data.alpha, orientation)
    return replace(data, rgb=_orient(data.rgb, orientation), alpha=alpha)


def read_rgb(path: Path) -> np.ndarray:
    """An 8-bit RGB ``[H, W, 3]`` array, with the EXIF orientation applied (alpha dropped)."""
    return to_8bit(read_image(path).rgb)


def probe_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` after orientation, from the header alone (nothing is decoded)."""
    with _decoding_errors(path), Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
            return height, width
        return width, height


@contextlib.contextmanager
def _decoding_errors(path: Path) -> Iterator[None]:
    """Map whatever decoding raises to one :class:`InputError` naming ``path``.

    Pillow only warns between ``MAX_IMAGE_PIXELS`` and twice that; such an image upscaled x4
    would not fit in memory either, so the warning is an error here.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except FileNotFoundError:
        reason = "dangling symbolic link" if path.is_symlink() else "file not found"
        raise InputError(f"{path}: {reason}") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not an image") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image Pillow can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"{path}: too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError, cv2.error) as exc:
        raise InputError(f"{path}: damaged or truncated image ({exc})") from None


def _is_deep_colour(img: Image.Image) -> bool:
    """16 bits per channel in a mode Pillow would truncate to 8 (RGB, RGBA, LA)."""
    if img.mode not in ("RGB", "RGBA", "LA") or not img.tile:
        return False
    args = img.tile[0][3]
    rawmode = args if isinstance(args, str) else args[0] if args else ""
    return isinstance(rawmode, str) and ";16" in rawmode


def _decode_deep_colour(path: Path, img: Image.Image) -> ImageData:
    pixels = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.ndim != 3:
        raise OSError("OpenCV could not decode its 16-bit pixels")
    if pixels.shape[2] == 2:
        rgb, alpha, grey = np.repeat(pixels[..., :1], 3, axis=2), pixels[..., 1], True
    else:
        rgb = pixels[..., 2::-1]  # BGR(A) -> RGB
        alpha, grey = (pixels[..., 3] if pixels.shape[2] == 4 else None), False
    return ImageData(
        rgb=rgb,
        alpha=alpha,
        bit_depth=16 if pixels.dtype == np.uint16 else 8,
        icc_profile=img.info.get("icc_profile") or None,
        greyscale=grey or img.mode == "LA",
        source_format=img.format,
    )


def _from_pillow(img: Image.Image) -> ImageData:
    """Everything Pillow decodes fully: 8-bit modes, 16-bit greyscale, palette, CMYK."""
    icc = img.info.get("icc_profile") or None
    base = ImageData(rgb=np.zeros((0, 0, 3), np.uint8), icc_profile=icc, source_format=img.format)
    if img.mode == "CMYK":
        return replace(base, rgb=_cmyk_to_srgb(img, icc), icc_profile=None)
    if img.mode in _GREY_16_MODES:
        grey = np.clip(np.asarray(img), 0, 65535).astype(np.uint16)
        return replace(
            base, rgb=np.repeat(grey[..., None], 3, axis=2), bit_depth=16, greyscale=True
        )
    has_alpha = img.mode in _ALPHA_MODES or "transparency" in img.info
    if img.mode in _GREY_MODES:
        grey = np.asarray(img.convert("LA" if has_alpha else "L"))
        if grey.ndim == 2:
            grey = grey[..., None]
        rgb = np.repeat(grey[..., :1], 3, axis=2)
        alpha = grey[..., 1] if has_alpha else None
        return replace(base, rgb=rgb, alpha=alpha, greyscale=True)
    pixels = np.asarray(img.convert("RGBA" if has_alpha else "RGB"))
    return replace(base, rgb=pixels[..., :3], alpha=pixels[..., 3] if has_alpha else None)


def _cmyk_to_srgb(img: Image.Image, icc: bytes | None) -> np.ndarray:
    """Through the embedded CMYK profile when there is one (colour-managed), else Pillow's
    naive formula.  The result is sRGB, so the CMYK profile is not written back."""
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            srgb = ImageCms.createProfile("sRGB")
            return np.asarray(ImageCms.profileToProfile(img, source, srgb, outputMode="RGB"))
        except (ImageCms.PyCMSError, OSError):
            pass  # an unusable profile: fall back to the formula, as most viewers do
    return np.asarray(img.convert("RGB"))


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) as ``ImageOps.exif_transpose`` does, on any depth."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(array) if op else array)


def output_format(path: Path) -> str:
    """Pillow format name for ``path``'s extension."""
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        known = ", ".join(sorted(_FORMATS))
        raise InputError(f"{path}: unknown output extension (use one of {known})") from None


def to_8bit(array: np.ndarray) -> np.ndarray:
    """16-bit samples rounded to 8 bits (65535 -> 255); 8-bit ones unchanged."""
    if array.dtype == np.uint8:
        return array
    return np.rint(array.astype(np.float64) / 257.0).astype(np.uint8)


def write_rgb(path: Path, array: np.ndarray, quality: int = 95) -> None:
    """Write an 8-bit RGB array atomically; the format follows the extension."""
    write_image(path, ImageData(rgb=array), quality)


def write_image(path: Path, image: ImageData, quality: int = 95) -> None:
    """Write ``image`` atomically in the format of ``path``'s extension.

    16 bits are kept where the format holds them (PNG, TIFF), else rounded to 8; JPEG has no
    alpha, so transparent images are composited onto white there.
    """
    fmt = output_format(path)
    deep = image.bit_depth == 16 and fmt in _DEEP_FORMATS
    pixels = _channels(image, fmt, deep)
    icc = image.icc_profile if fmt in _ICC_FORMATS else None
    with atomic_path(path) as tmp:
        if pixels.dtype == np.uint16 and pixels.ndim == 3:
            _write_deep_colour(tmp, fmt, pixels, icc)
        else:
            options: dict = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
            if icc:
                options["icc_profile"] = icc
            Image.fromarray(pixels).save(tmp, format=fmt, **options)


def _channels(image: ImageData, fmt: str, deep: bool) -> np.ndarray:
    """The array to encode: grey or RGB, with alpha where kept, at 8 or 16 bits."""
    rgb, alpha = image.rgb, image.alpha
    if not deep:
        rgb, alpha = to_8bit(rgb), None if alpha is None else to_8bit(alpha)
    if alpha is not None and fmt == "JPEG":
        rgb, alpha = _over_white(rgb, alpha), None
    if image.greyscale:
        grey = _luma(rgb)
        if alpha is None:
            return grey
        if fmt in ("PNG", "TIFF") and grey.dtype == np.uint8:
            return np.dstack([grey, alpha])
        rgb = np.repeat(grey[..., None], 3, axis=2)  # no 16-bit grey+alpha writer: RGBA
    return rgb if alpha is None else np.dstack([rgb, alpha])


def _luma(rgb: np.ndarray) -> np.ndarray:
    top = np.iinfo(rgb.dtype).max
    return np.clip(np.rint(rgb @ _LUMA), 0, top).astype(rgb.dtype)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    top = float(np.iinfo(rgb.dtype).max)
    a = alpha[..., None] / top
    return np.rint(rgb * a + top * (1.0 - a)).astype(rgb.dtype)


def _write_deep_colour(tmp: Path, fmt: str, pixels: np.ndarray, icc: bytes | None) -> None:
    """16-bit RGB(A), which Pillow cannot write."""
    if fmt == "TIFF":
        alpha = (2,) if pixels.shape[2] == 4 else None  # 2: unassociated alpha
        tifffile.imwrite(
            tmp, pixels, photometric="rgb", extrasamples=alpha, compression="zlib", iccprofile=icc
        )
        return
    bgr = [2, 1, 0, 3][: pixels.shape[2]]
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(pixels[..., bgr]))
    if not ok:
        raise OSError(f"OpenCV could not encode {tmp}")
    data = encoded.tobytes()
    tmp.write_bytes(_with_icc_chunk(data, icc) if icc else data)


def _with_icc_chunk(png: bytes, icc: bytes) -> bytes:
    """Insert an ``iCCP`` chunk right after ``IHDR`` (PNG requires it before ``IDAT``)."""
    header_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR: length, type, 13 data bytes, CRC
    body = b"iCCP" + b"ICC profile\x00\x00" + zlib.compress(icc)
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:header_end] + chunk + png[header_end:]
