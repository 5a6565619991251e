"""What every family's runner shares: settings, reduced precision, tile progress, results."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from ttsr_cli.archs.descriptor import Descriptor
from ttsr_cli.devices import format_size, release_free_memory
from ttsr_cli.errors import TTSRError
from ttsr_cli.imageio import ImageData
from ttsr_cli.pixels import final_size, resize, resize_bicubic
from ttsr_cli.tiles import Tile, core_slices

#: Called with (tiles done, tiles in all) as a tiled image progresses.
TileCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RunSettings:
    """How to run any model, as the command line states it.

    ``memory_budget``: bytes one image's run may use (``--max-memory``; None: half of what
    is free when the image starts).  ``tile``: force tiles (TTSR) or attention windows
    (CSNLN) of this many LR pixels a side.  ``search``: TTSR's relevance search.
    ``attention``: CSNLN's attention, exact, windowed or auto.  ``max_steps``: the most
    tools RL-Restore applies (None: the model's own); ``keep_steps``: keep each step's image
    (``--save-steps``).  ``seg_weights``: the segmentation network an SFT-GAN's priors come
    from (``--seg-weights``); ``seg_maps``: whether they come from files instead
    (``--seg-maps``), which makes the network optional.  ``channels_last``: run
    TTSR's convolutions in NHWC (faster on CPUs and tensor cores; the model is converted in
    place, so a trainer validating its own model passes its layout).
    """

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: torch.dtype = torch.float32
    memory_budget: int | None = None
    tile: int | None = None
    search: str = "auto"
    attention: str = "auto"
    channels_last: bool = True
    max_steps: int | None = None
    keep_steps: bool = False
    seg_weights: str | None = None
    seg_maps: bool = False


@dataclass
class Upscaled:
    """A result with what the network decided.

    ``sr``: the image (same bit depth as the input).  ``tiles``: how many tiles or windows
    it took (1: whole).  ``mode``: the choices made for this image, as ``--json`` reports
    them (``{"search": "fast"}``, ``{"attention": "exact"}``).  TTSR only: ``attention``
    (soft attention S, ``[h, w]`` at LR resolution), ``source`` (the matched reference
    position per LR position, counted over the references' lv3 ``grids`` concatenated
    row-major).  ``warnings``: what was done that was probably not meant (one line each).
    RL-Restore only: ``steps``, the image after each tool (when the runner keeps them).
    SFT-GAN only: ``priors``, the class probabilities ``[8, H, W]`` at the output size.
    """

    sr: np.ndarray
    tiles: int = 1
    mode: dict[str, Any] = field(default_factory=dict)
    attention: np.ndarray | None = None
    source: np.ndarray | None = None
    grids: list[tuple[int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    steps: list[np.ndarray] = field(default_factory=list)
    priors: np.ndarray | None = None

    @property
    def relevance(self) -> float | None:
        """Mean soft attention: how well, on average, the references' best patches matched
        (TTSR only).  Low when a reference shares nothing with the image."""
        return None if self.attention is None else float(self.attention.mean())


def autocast(device: torch.device, precision: torch.dtype) -> contextlib.AbstractContextManager:
    """Reduced precision through autocast: the weights stay fp32, so ops autocast keeps in
    fp32 (normalisation, reductions, softmax) stay accurate.  fp32 means fp32: on CUDA the
    TF32 convolutions and products PyTorch allows by default are turned off for the run
    (with them the CSNLN fixture's x4 output moved by 4.5e-4 and 975 8-bit values; without,
    by 1.6e-6 and none)."""
    if precision != torch.float32:
        return torch.autocast(device.type, dtype=precision)
    if device.type != "cuda":
        return contextlib.nullcontext()
    return _without_tf32()


@contextlib.contextmanager
def _without_tf32() -> Iterator[None]:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class Progress:
    """Counts tiles done for a :data:`TileCallback`, and returns each tile's freed memory to
    the system before the next (:func:`release_free_memory`)."""

    def __init__(self, device: torch.device, callback: TileCallback | None, total: int) -> None:
        self.device, self.callback, self.total, self.done = device, callback, total, 0

    def step(self) -> None:
        release_free_memory(self.device)
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


def stitch(
    out: torch.Tensor,
    tiles: list[Tile],
    run_tile: Callable[[Tile], torch.Tensor],
    progress: Progress,
    scale: int = 1,
) -> torch.Tensor:
    """Fill ``out`` (``[..., scale * H, scale * W]``) with the core of each tile's result:
    ``run_tile(tile)`` is the network's output for what the tile reads, ``scale`` times its
    size, and the tiles' cores partition the image."""
    for tile in tiles:
        found = run_tile(tile)
        rows, cols = core_slices(tile)
        target = (scale_slice(tile.core[0], scale), scale_slice(tile.core[1], scale))
        out[(..., *target)] = found[..., scale_slice(rows, scale), scale_slice(cols, scale)]
        progress.step()
    return out


def scale_slice(span: slice, factor: int) -> slice:
    """``span`` on a grid ``factor`` times finer."""
    return slice(span.start * factor, span.stop * factor)


def budget_warning(shortfall: int) -> str:
    """What a run says when even its smallest tiles need ``shortfall`` bytes more than the
    budget: every family runs them anyway."""
    return (
        f"the memory budget is too small for this image: even its smallest tiles need about "
        f"{format_size(shortfall)} more; they ran anyway"
    )


class Runner:
    """Runs one loaded network on images held as arrays, within a memory budget.

    Subclasses (one per family) implement :meth:`upscale_detailed`; the whole-file path
    (alpha, ``--outscale``) is the same for all of them.
    """

    descriptor: Descriptor
    #: Called with (tiles done, tiles in all) as a tiled image progresses.
    on_tile: TileCallback | None = None

    def upscale_detailed(self, lr: np.ndarray, references: Any = None) -> Upscaled:
        raise NotImplementedError

    def encode_reference(self, ref: np.ndarray) -> Any:
        """A reference's features, for the families that search one (the descriptor's
        ``takes_reference``); the others are never asked."""
        raise TTSRError(f"a {self.descriptor.family} model takes no reference")

    def upscale(self, lr: np.ndarray, references: Any = None) -> np.ndarray:
        """The super-resolved ``lr`` (uint8 or uint16 ``[H, W, 3]``; same type out)."""
        return self.upscale_detailed(lr, references).sr

    def upscale_image(
        self, image: ImageData, references: Any = None, outscale: float | None = None
    ) -> tuple[ImageData, Upscaled]:
        """A decoded file at the model's scale: colour through the network, alpha by bicubic
        (no network knows transparency); depth, profile and greyness carried over.  With
        ``outscale`` the result is then resized with Lanczos to ``outscale`` x the input."""
        result = self.upscale_detailed(image.rgb, references)
        sr = result.sr
        if outscale is not None:
            sr = resize(sr, *final_size(image.size, outscale), Image.LANCZOS)
        alpha = image.alpha
        if alpha is not None:
            alpha = resize_bicubic(alpha, sr.shape[1], sr.shape[0])
        return replace(image, rgb=sr, alpha=alpha), result
