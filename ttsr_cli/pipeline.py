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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ttsr_cli.devices import (
    default_memory_budget,
    default_search_budget,
    release_free_memory,
    search_budget_within,
)
from ttsr_cli.errors import InputError, TTSRError
from ttsr_cli.imageio import ImageData, output_format, read_image, write_image
from ttsr_cli.nn import TTSR
from ttsr_cli.nn.attention import search_working_bytes
from ttsr_cli.nn.fast_search import choose_search
from ttsr_cli.nn.ttsr import SEARCHES, Coarse, ReferenceFeatures, TTSROutput
from ttsr_cli.pictures import (
    attention_picture,
    compare_sheet,
    most_used_region,
    source_picture,
    to_8bit,
)
from ttsr_cli.tiles import (
    DEFAULT_OVERLAP,
    Tile,
    TilePlan,
    core_slices,
    fine_overlap,
    plan_passes,
    plan_tiles,
    ramp,
)

SCALE = 4
_UINT16_MAX = 65535
#: Share of the memory budget one reference's fp32 features may take.  A larger reference
#: stores its values in fp16 (a 12-megapixel one's features, paper widths: 6.1 GB -> 3.5 GB)
#: for a change far below visibility: PSNR against fp32 storage above 115 dB before rounding
#: and 80 dB in 8 bits (tests/benchmarks/bench_value_storage.py).
REFERENCE_SHARE = 0.5
#: Dtype of the values of references too large for :data:`REFERENCE_SHARE`.  fp16, not
#: bf16: three more significand bits, and every device stores, indexes and casts it; ReLU
#: features of normalised images stay far inside its range (65504).
COMPACT_VALUES = torch.float16


def resize_bicubic(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pillow bicubic resize, as the original's data pipeline does (see :func:`resize`)."""
    return resize(array, width, height, Image.BICUBIC)


def resize(array: np.ndarray, width: int, height: int, resample: int) -> np.ndarray:
    """Pillow resize with filter ``resample``.

    8-bit arrays go through Pillow's 8-bit filter unchanged (bit-exact with the original).
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


@dataclass
class Upscaled:
    """An x4 result with what the network decided, for pictures of it.

    ``attention``: soft attention S (relevance of the best match), ``[h, w]`` at LR resolution.
    ``source``: hard attention, the matched reference position per LR position, counted over
    the references' lv3 grids (``grids``, ``(rows, columns)`` each) concatenated row-major.
    ``tiles``: how many tiles the image was processed in (1: untiled).  ``search``: the
    relevance search used (exact or fast).
    """

    sr: np.ndarray
    attention: np.ndarray
    source: np.ndarray
    grids: list[tuple[int, int]]
    tiles: int = 1
    search: str = "exact"


TileCallback = Callable[[int, int], None]


class Upscaler:
    """Runs a TTSR model on images held as arrays, keeping references' features for reuse.

    ``memory_budget`` (bytes) bounds a whole upscale: the relevance search takes its share and,
    when the network at 4x would not fit in the rest, the image is processed in overlapping
    tiles (``tile`` forces a tile core side in LR pixels).  ``search_budget`` alone, without a
    memory budget, bounds only the search, as before tiling existed.  ``search``: exact, fast,
    or auto (exact unless that would cost more than ``AUTO_EXACT_MACS``, decided per image).
    """

    def __init__(
        self,
        model: TTSR,
        device: torch.device,
        search_budget: int | None = None,
        precision: torch.dtype = torch.float32,
        memory_budget: int | None = None,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
        search: str = "exact",
        channels_last: bool = True,
    ) -> None:
        if search not in (*SEARCHES, "auto"):
            raise TTSRError(f"unknown search '{search}' (use exact, fast or auto)")
        # NHWC convolutions are faster on CPUs and tensor cores (same numbers to ~1e-7).  The
        # model is converted in place: a trainer validating its model passes its own layout.
        layout = torch.channels_last if channels_last else torch.preserve_format
        self.model = model.to(device, memory_format=layout).eval()
        self.search = search
        self.device = device
        self.memory_budget = memory_budget
        if search_budget is None and memory_budget is not None:
            search_budget = search_budget_within(memory_budget)
        self.search_budget = search_budget
        self.precision = precision
        self.tile = tile
        self.overlap = overlap
        #: Called with (tiles done, tiles in all) as a tiled image progresses.
        self.on_tile: TileCallback | None = None

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Reduced precision through autocast: the weights stay fp32, so ops autocast keeps in
        fp32 (normalisation, reductions) stay accurate, and fp32 runs exactly as before."""
        if self.precision == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.precision)

    @torch.inference_mode()
    def encode_reference(self, ref: np.ndarray) -> ReferenceFeatures:
        """LTE features of one reference image (8 or 16 bits, any size of at least 4x4).

        Its activations take the working share of the budget that the search takes later
        (the two never run at once), so a large reference is encoded in bands; its values
        are stored in fp16 when they would take too much of the budget in fp32.
        """
        ref_img, refsr_img = reference_pair(ref)
        budget = self._memory_budget()
        values_dtype = self._values_dtype(ref_img.shape[0], ref_img.shape[1], budget)
        with self._autocast():
            return self.model.encode_reference(
                to_tensor(ref_img, self.device),
                to_tensor(refsr_img, self.device),
                search_budget_within(budget),
                values_dtype,
            )

    def _values_dtype(self, height: int, width: int, budget: int) -> torch.dtype | None:
        """Storage dtype for a reference's values; None keeps the computed one (always for
        reduced precision, whose features are already half-size)."""
        if self.precision != torch.float32:
            return None
        full = reference_feature_bytes(height, width, self.model.config.lte_widths, 4)
        return None if full <= REFERENCE_SHARE * budget else COMPACT_VALUES

    def upscale(
        self, lr: np.ndarray, references: Sequence[ReferenceFeatures] | None = None
    ) -> np.ndarray:
        """x4 super-resolution of ``lr`` (uint8 or uint16 ``[H, W, 3]``; the result has the same
        type).  Without references the image is its own reference (LR up-sampled), as the TTSR
        authors evaluate on Urban100 and Manga109."""
        return self.upscale_detailed(lr, references).sr

    @torch.inference_mode()
    def upscale_detailed(
        self, lr: np.ndarray, references: Sequence[ReferenceFeatures] | None = None
    ) -> Upscaled:
        """:meth:`upscale` with the attention maps; tiled when the budget asks for it."""
        h, w = lr.shape[:2]
        lrsr = resize_bicubic(lr, w * SCALE, h * SCALE)
        own = not references
        if own:
            references = [self.encode_reference(lrsr)]
        grids = [(int(r.key.shape[-2]), int(r.key.shape[-1])) for r in references]
        search = self.search_for(h * w, sum(gh * gw for gh, gw in grids))
        plan = self.tile_plan(h, w, references)
        if plan is None:
            # As its own reference, the image's query features are its reference's lv3.
            lv3 = references[0].values[2]
            query = lv3 if own and lv3.dtype == references[0].key.dtype else None
            out = self._run(lr, lrsr, references, search, query)
            sr = to_image(out.sr, 16 if lr.dtype == np.uint16 else 8)
            return Upscaled(sr, _attention(out), _source(out), grids, search=search)
        return self._tiled(lr, lrsr, references, grids, plan, search)

    def search_for(self, query_positions: int, key_positions: int) -> str:
        """The search one image gets: as asked, or for auto chosen from the whole image's
        size (so all its tiles are searched alike)."""
        if self.search != "auto":
            return self.search
        channels = self.model.config.lte_widths[2]
        return choose_search(query_positions, key_positions, channels)

    def tile_plan(
        self,
        lr_height: int,
        lr_width: int,
        references: Sequence[ReferenceFeatures],
    ) -> TilePlan | None:
        """How an image of this size is tiled (:mod:`ttsr_cli.tiles`), or None to run it
        whole.  Each coarse tile runs the search, so what the search holds at most is left
        out of the tiles' share (its blocks are capped, so that is far less than its
        budget)."""
        if self.memory_budget is None:
            budget = default_memory_budget(self.device)  # references already left free memory
        else:
            budget = self.memory_budget - sum(_feature_bytes(r) for r in references)
        search_budget = self.search_budget or default_search_budget(self.device)
        budget -= search_working_bytes([r.key for r in references], search_budget)
        if self.tile is not None:
            if self.tile >= max(lr_height, lr_width):
                return None
            coarse = plan_tiles(lr_height, lr_width, self.tile, self.overlap)
            fine = plan_tiles(lr_height, lr_width, self.tile, fine_overlap(self.overlap))
            return TilePlan(coarse, fine, max(budget, 0))
        config = self.model.config
        widths = (config.n_feats, *config.lte_widths[:2])
        elem_size = torch.finfo(self.precision).bits // 8
        return plan_passes((lr_height, lr_width), budget, widths, self.overlap, elem_size)

    def _memory_budget(self) -> int:
        """The whole-upscale budget: as given, or a share of what is free right now."""
        if self.memory_budget is None:
            return default_memory_budget(self.device)
        return self.memory_budget

    def _run(
        self,
        lr: np.ndarray,
        lrsr: np.ndarray,
        references: Sequence[ReferenceFeatures],
        search: str,
        query: torch.Tensor | None = None,
    ) -> TTSROutput:
        with self._autocast():
            return self.model.upscale(
                to_tensor(lr, self.device),
                to_tensor(lrsr, self.device),
                references,
                self.search_budget,
                search,
                query,
            )

    def _tiled(
        self,
        lr: np.ndarray,
        lrsr: np.ndarray,
        references: Sequence[ReferenceFeatures],
        grids: list[tuple[int, int]],
        plan: TilePlan,
        search: str,
    ) -> Upscaled:
        """The coarse pass, then the fine pass (see :mod:`ttsr_cli.tiles`).  Each tile reads
        its LR crop and the same crop of the whole image's LR-up, so it sees exactly the
        untiled inputs; the maps are the coarse pass's, which holds them whole."""
        progress = _Progress(self.device, self.on_tile, len(plan.coarse) + len(plan.fine))
        with self._autocast():
            coarse = self._coarse_pass(lr, lrsr, references, plan, search, progress)
            total = self._fine_pass(coarse, lrsr, references, plan.fine, progress)
        sr = to_image(total.unsqueeze(0), 16 if lr.dtype == np.uint16 else 8)
        attention = coarse.S[0, 0].float().cpu().numpy()
        source = coarse.index[0].cpu().numpy()
        return Upscaled(sr, attention, source, grids, len(plan.fine), search)

    def _coarse_pass(
        self,
        lr: np.ndarray,
        lrsr: np.ndarray,
        references: Sequence[ReferenceFeatures],
        plan: TilePlan,
        search: str,
        progress: _Progress,
    ) -> Coarse:
        """Stages 1 and 2 tile by tile; each tile's core of their outputs goes into maps of
        the whole image.  Each tile's LTE pass runs in bands within the plan's budget."""
        whole: Coarse | None = None
        for tile in plan.coarse:
            ys, xs = tile.read
            lr_t = to_tensor(lr[ys, xs], self.device)
            lrsr_t = to_tensor(lrsr[_hr(ys), _hr(xs)], self.device)
            part = self.model.upscale_coarse(lr_t, lrsr_t, references, plan.budget, search)
            whole = whole or Coarse.empty(part, lr.shape[0], lr.shape[1])
            whole.crop(*tile.core).copy_(part.crop(*core_slices(tile)))
            del part
            progress.step()
        assert whole is not None, "an image has at least one tile"
        return whole

    def _fine_pass(
        self,
        coarse: Coarse,
        lrsr: np.ndarray,
        references: Sequence[ReferenceFeatures],
        tiles: list[Tile],
        progress: _Progress,
    ) -> torch.Tensor:
        """Stage 3 and the tail tile by tile, from crops of the whole image's coarse maps;
        the outputs cross-faded into one ``[3, 4H, 4W]`` image."""
        h, w = coarse.S.shape[-2:]
        overlap = fine_overlap(self.overlap)
        total = torch.zeros(3, h * SCALE, w * SCALE)
        for tile in tiles:
            ys, xs = tile.read
            lrsr_t = to_tensor(lrsr[_hr(ys), _hr(xs)], self.device)
            sr = self.model.upscale_fine(coarse.crop(ys, xs), lrsr_t, references)
            weight = np.outer(ramp(tile.y, h, overlap, SCALE), ramp(tile.x, w, overlap, SCALE))
            total[:, _hr(ys), _hr(xs)] += sr[0].float().cpu() * torch.from_numpy(weight)
            del sr
            progress.step()
        return total

    def upscale_image(
        self,
        image: ImageData,
        references: Sequence[ReferenceFeatures] | None = None,
        outscale: float | None = None,
    ) -> tuple[ImageData, Upscaled]:
        """x4 of a decoded file: colour through the network, alpha by bicubic (the network
        knows nothing of transparency); depth, profile and greyness carried over.  With
        ``outscale`` the x4 result is then resized with Lanczos to ``outscale`` x the input."""
        result = self.upscale_detailed(image.rgb, references)
        sr = result.sr
        if outscale is not None:
            sr = resize(sr, *final_size(image.size, outscale), Image.LANCZOS)
        alpha = image.alpha
        if alpha is not None:
            alpha = resize_bicubic(alpha, sr.shape[1], sr.shape[0])
        return replace(image, rgb=sr, alpha=alpha), result


class _Progress:
    """Counts tiles done across both passes for :attr:`Upscaler.on_tile`, and returns each
    tile's freed memory to the system before the next (:func:`release_free_memory`)."""

    def __init__(self, device: torch.device, callback: TileCallback | None, total: int) -> None:
        self.device, self.callback, self.total, self.done = device, callback, total, 0

    def step(self) -> None:
        release_free_memory(self.device)
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


def _hr(lr_span: slice) -> slice:
    """The output rows (or columns) of LR rows ``lr_span``."""
    return slice(lr_span.start * SCALE, lr_span.stop * SCALE)


def final_size(size: tuple[int, int], outscale: float) -> tuple[int, int]:
    """``(width, height)`` of an input of ``size`` at ``outscale`` (at least one pixel)."""
    return tuple(max(1, round(side * outscale)) for side in size)  # type: ignore[return-value]


def _attention(out: TTSROutput) -> np.ndarray:
    return out.S[0, 0].float().cpu().numpy()


def _source(out: TTSROutput) -> np.ndarray:
    h, w = out.S.shape[-2:]
    return out.hard_index[0].view(h, w).cpu().numpy()


def _feature_bytes(features: ReferenceFeatures) -> int:
    """Memory held by encoded features, at the dtypes they are stored in."""
    tensors = (features.key, *features.values)
    return sum(t.numel() * t.element_size() for t in tensors)


def reference_feature_bytes(
    height: int, width: int, widths: tuple[int, int, int], elem_size: int
) -> int:
    """What :func:`_feature_bytes` will be for a ``height x width`` reference (multiples of 4)
    stored at ``elem_size`` bytes: values lv1, lv2, lv3 and the key, an lv3-sized map."""
    w1, w2, w3 = widths
    pixels = height * width
    return elem_size * (w1 * pixels + w2 * pixels // 4 + 2 * w3 * pixels // 16)


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


@dataclass(frozen=True)
class UpscaleOptions:
    """What to write besides the x4 image.

    ``outscale``: final scale (the x4 result resized with Lanczos); ``attention_dir``: folder
    for ``STEM_attention.png`` and ``STEM_source.png``; ``compare``: ``STEM_compare.png``
    beside the output.
    """

    outscale: float | None = None
    attention_dir: Path | None = None
    compare: bool = False


@dataclass(frozen=True)
class Written:
    """What :func:`upscale_file` wrote: the output's ``(width, height)``, the tile count and
    the search used."""

    size: tuple[int, int]
    tiles: int
    search: str


def upscale_file(
    upscaler: Upscaler,
    source: Path,
    destination: Path,
    references: Sequence[ReferenceFeatures] | None = None,
    quality: int = 95,
    options: UpscaleOptions = UpscaleOptions(),
    reference_paths: Sequence[Path] = (),
) -> Written:
    """Upscale one image file into ``destination`` (written atomically), with the pictures
    ``options`` ask for.  ``reference_paths``: the files ``references`` were encoded from
    (none: the image is its own reference), for the comparison sheet."""
    if destination.resolve() == source.resolve():
        raise InputError(f"{source}: refusing to overwrite the input with its own output")
    output_format(destination)
    image = read_image(source)
    sr, result = upscaler.upscale_image(image, references, options.outscale)
    write_image(destination, sr, quality)
    if options.attention_dir is not None:
        _write_maps(options.attention_dir, source.stem, result, sr.size)
    if options.compare:
        ref = _compare_reference(image.rgb, reference_paths, result)
        panels = [("bicubic x4", _bicubic_x4(image.rgb)), ("ttsr", result.sr), ("reference", ref)]
        _write_png(destination.parent / f"{source.stem}_compare.png", compare_sheet(panels))
    return Written(sr.size, result.tiles, result.search)


def _write_maps(folder: Path, stem: str, result: Upscaled, size: tuple[int, int]) -> None:
    _write_png(folder / f"{stem}_attention.png", attention_picture(result.attention, size))
    _write_png(folder / f"{stem}_source.png", source_picture(result.source, result.grids, size))


def _bicubic_x4(lr: np.ndarray) -> np.ndarray:
    return resize_bicubic(lr, lr.shape[1] * SCALE, lr.shape[0] * SCALE)


def _compare_reference(lr: np.ndarray, paths: Sequence[Path], result: Upscaled) -> np.ndarray:
    """The reference window the hard attention used most, at the output's scale."""
    number, top, left, height, width = most_used_region(result.source, result.grids)
    ref = read_image(paths[number]).rgb if paths else _bicubic_x4(lr)
    rows = slice(top * SCALE, (top + height) * SCALE)
    return ref[rows, left * SCALE : (left + width) * SCALE]


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, ImageData(rgb=to_8bit(rgb)))
