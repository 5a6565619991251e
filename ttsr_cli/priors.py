"""SFT-GAN priors a user gives (``ttsr upscale --seg-maps FILE|DIR``): the class probability
maps the generator is conditioned on, read from files instead of made by the segmentation
network, so that any segmentation a user already has (or has corrected) drives the textures.

Formats, each at the output's size (the input's sides times 4), classes in the official order
(:data:`ttsr_cli.archs.sftgan.CLASSES`):

- ``.npy``: float ``[8, H, W]`` probabilities (non-negative; the official condition is the
  segmentation's softmax, used as it is), or integer ``[H, W]`` class indices 0..7;
- a colour PNG in the official palette (what ``--save-priors`` writes as
  ``STEM_segmentation.png``, so a saved segmentation can be corrected and given back), or in
  a palette of the user's (``--seg-palette FILE``: lines ``CLASS R G B``);
- a single-channel (grey) PNG of class indices 0..7.

Label maps become one-hot probabilities.  ``--seg-maps FILE`` serves a single input;
``--seg-maps DIR`` serves each input with ``DIR/STEM.npy`` or ``DIR/STEM.png`` (STEM the
input's); an input without one gets the segmentation network's priors when ``--seg-weights``
is given, and otherwise fails alone, as an unreadable input does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ttsr_cli.archs.sftgan import CLASSES
from ttsr_cli.errors import InputError, TTSRError

#: The official colour of each class, in class order (``test_segmentation.py``'s lookup
#: table), RGB: ``--save-priors`` paints with it and ``--seg-maps`` reads it.
PALETTE = (
    (153, 153, 153),
    (0, 255, 255),
    (109, 158, 235),
    (183, 225, 205),
    (153, 0, 255),
    (17, 85, 204),
    (106, 168, 79),
    (224, 102, 102),
)
SUFFIXES = (".npy", ".png")


def read_palette(path: Path) -> dict[tuple[int, int, int], int]:
    """A user's palette file: one ``CLASS R G B`` line per colour (a class may have several;
    ``#`` starts a comment).  Valid, or one line naming the file and the line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TTSRError(f"--seg-palette {path}: cannot read it ({exc})") from None
    palette: dict[tuple[int, int, int], int] = {}
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        try:
            name, *rgb = words
            colour = tuple(int(v) for v in rgb)
            if name not in CLASSES or len(colour) != 3 or not all(0 <= v < 256 for v in colour):
                raise ValueError
        except ValueError:
            raise TTSRError(
                f"--seg-palette {path}: line {number} is not 'CLASS R G B' with CLASS one of "
                f"{', '.join(CLASSES)} and R, G, B in 0..255"
            ) from None
        palette[colour] = CLASSES.index(name)  # type: ignore[index]
    if not palette:
        raise TTSRError(f"--seg-palette {path}: no colours in it")
    return palette


class PriorMaps:
    """Where each input's priors are (``--seg-maps``), and how they are read."""

    def __init__(
        self,
        path: Path,
        palette: dict[tuple[int, int, int], int] | None = None,
        fallback: bool = False,
    ) -> None:
        if not path.exists():
            raise TTSRError(f"--seg-maps {path}: no such file or folder")
        if path.is_file() and path.suffix.lower() not in SUFFIXES:
            raise TTSRError(f"--seg-maps {path}: not a .npy or .png prior map")
        self.path, self.fallback = path, fallback
        self.palette = palette or {colour: k for k, colour in enumerate(PALETTE)}

    def check_inputs(self, count: int) -> None:
        """A single file serves a single input (a usage error otherwise, before any work)."""
        if self.path.is_file() and count > 1:
            raise TTSRError(
                f"--seg-maps {self.path}: one map for {count} inputs; give a folder of "
                "STEM.npy or STEM.png maps"
            )

    def find(self, source: Path) -> Path | None:
        """The map of input ``source`` (None: it has none, and the network makes them)."""
        if self.path.is_file():
            return self.path
        for suffix in SUFFIXES:
            candidate = self.path / f"{source.stem}{suffix}"
            if candidate.is_file():
                return candidate
        if self.fallback:
            return None
        raise InputError(f"{source}: no prior map {source.stem}.npy or .png in {self.path}")

    def read(self, source: Path, size: tuple[int, int]) -> np.ndarray | None:
        """float32 ``[8, H, W]`` priors of ``source``, whose output is ``size`` (w, h); None
        where the segmentation network makes them (:meth:`find`)."""
        path = self.find(source)
        if path is None:
            return None
        priors = self.load(path)
        if priors.shape[1:] != (size[1], size[0]):
            found = f"{priors.shape[2]}x{priors.shape[1]}"
            raise InputError(
                f"{source}: its prior map {path} is {found}, but the output is "
                f"{size[0]}x{size[1]} (the maps are at the output's size)"
            )
        return priors

    def size(self, path: Path) -> tuple[int, int]:
        """The map's (w, h), read from its header alone (a training set's maps are checked
        against their photos before any step)."""
        try:
            if path.suffix.lower() == ".npy":
                shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
                return int(shape[-1]), int(shape[-2])
            with Image.open(path) as img:
                return img.size
        except (OSError, ValueError, EOFError, IndexError) as exc:
            raise InputError(f"{path}: cannot read this prior map ({exc})") from None

    def load(self, path: Path) -> np.ndarray:
        """float32 ``[8, H, W]`` priors of the map file ``path``, at whatever size it is."""
        return _read_npy(path) if path.suffix.lower() == ".npy" else self._read_png(path)

    def _read_png(self, path: Path) -> np.ndarray:
        try:
            with Image.open(path) as img:
                grey = img.mode in ("L", "I", "I;16")
                pixels = np.asarray(img if grey else img.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: cannot read this prior map ({exc})") from None
        if grey:
            return _one_hot(pixels.astype(np.int64), path)
        return _one_hot(_colours_to_labels(pixels, self.palette, path), path)


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: cannot read this prior map ({exc})") from None
    if array.ndim == 2 and np.issubdtype(array.dtype, np.integer):
        return _one_hot(array.astype(np.int64), path)
    if array.ndim != 3 or array.shape[0] != len(CLASSES) or array.dtype.kind != "f":
        raise InputError(
            f"{path}: a prior map is float {len(CLASSES)}xHxW probabilities or integer HxW "
            f"class indices, not {array.dtype} {'x'.join(map(str, array.shape))}"
        )
    if not np.isfinite(array).all() or (array < 0).any():
        raise InputError(f"{path}: probabilities must be finite and non-negative")
    return array.astype(np.float32)


def _colours_to_labels(
    pixels: np.ndarray, palette: dict[tuple[int, int, int], int], path: Path
) -> np.ndarray:
    wide = pixels.astype(np.int64)
    packed = (wide[..., 0] << 16) | (wide[..., 1] << 8) | wide[..., 2]
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], dtype=np.int64)
    order = np.argsort(keys)
    spot = np.clip(np.searchsorted(keys[order], packed), 0, len(keys) - 1)
    known = keys[order][spot] == packed
    if not known.all():
        y, x = np.argwhere(~known)[0]
        colour = tuple(int(v) for v in pixels[y, x])
        raise InputError(
            f"{path}: colour {colour} at ({x}, {y}) is not in the palette (the official one, "
            "or --seg-palette's)"
        )
    labels = np.array(list(palette.values()), dtype=np.int64)[order]
    return labels[spot]


def _one_hot(labels: np.ndarray, path: Path) -> np.ndarray:
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise InputError(f"{path}: class indices must be 0..{len(CLASSES) - 1}")
    return np.eye(len(CLASSES), dtype=np.float32)[labels].transpose(2, 0, 1).copy()
