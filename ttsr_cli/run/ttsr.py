"""Running a TTSR model on image arrays within a memory budget, references encoded once.

The relevance search takes its share of the budget; when the network at 4x would not fit
in the rest, the image is processed in overlapping tiles in two passes
(:mod:`ttsr_cli.tiles`).  References are encoded once and reused for any number of LR
images (:class:`ReferenceCache` shares them by path across a batch, with their fast-search
index).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ttsr_cli.archs.descriptor import Descriptor
from ttsr_cli.archs.ttsr import TTSR
from ttsr_cli.archs.ttsr.attention import search_working_bytes
from ttsr_cli.archs.ttsr.fast_search import KeyIndex, choose_search
from ttsr_cli.archs.ttsr.load import describe as describe_ttsr
from ttsr_cli.archs.ttsr.model import SCALE, SEARCHES, Coarse, ReferenceFeatures, TTSROutput
from ttsr_cli.devices import (
    default_memory_budget,
    default_search_budget,
    search_budget_within,
)
from ttsr_cli.errors import InputError, TTSRError
from ttsr_cli.imageio import read_image
from ttsr_cli.pixels import bit_depth, reference_pair, resize_bicubic, to_image, to_tensor
from ttsr_cli.run.common import Progress, Runner, Upscaled, autocast, budget_warning
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

#: Share of the memory budget one reference's fp32 features may take.  A larger reference
#: stores its values in fp16 (a 12-megapixel one's features, paper widths: 6.1 GB -> 3.5 GB)
#: for a change far below visibility: PSNR against fp32 storage above 115 dB before rounding
#: and 80 dB in 8 bits (tests/benchmarks/bench_value_storage.py).
REFERENCE_SHARE = 0.5
#: Dtype of the values of references too large for :data:`REFERENCE_SHARE`.  fp16, not
#: bf16: three more significand bits, and every device stores, indexes and casts it; ReLU
#: features of normalised images stay far inside its range (65504).
COMPACT_VALUES = torch.float16


@dataclass
class References:
    """The encoded references one image searches, with their fast-search index (built on
    first use, shared by the image's tiles and by every image with the same references)."""

    features: list[ReferenceFeatures]
    index: KeyIndex


def reference_set(features: Sequence[ReferenceFeatures]) -> References:
    return References(list(features), KeyIndex([f.key for f in features]))


#: Mean soft attention under which a given reference is called unrelated (a warning, not a
#: refusal).  Measured with the bundled model on 30 Urban100 pairs (a 64x64 LR and a shifted,
#: rescaled 256 px crop of the same photo): true references 0.62-0.88, another Urban100
#: photo 0.37-0.64, scikit-image photos of other kinds 0.39-0.67, the image itself 0.91-0.99.
#: At 0.6 no true reference was flagged and 56 of the 60 unrelated ones were.
UNRELATED_RELEVANCE = 0.6


class TTSRRunner(Runner):
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
        descriptor: Descriptor | None = None,
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
        self.descriptor = descriptor or _describe(model)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.precision)

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

    @torch.inference_mode()
    def upscale_detailed(
        self,
        lr: np.ndarray,
        references: References | Sequence[ReferenceFeatures] | None = None,
    ) -> Upscaled:
        """x4 super-resolution of ``lr`` (uint8 or uint16 ``[H, W, 3]``; the result has the
        same type) with the attention maps; tiled when the budget asks for it.  Without
        references the image is its own reference (LR up-sampled), as the TTSR authors
        evaluate on Urban100 and Manga109.  A given reference whose patches barely match
        (mean soft attention under :data:`UNRELATED_RELEVANCE`) draws a warning."""
        result = self._upscale(lr, references)
        relevance = result.relevance
        if references and relevance is not None and relevance < UNRELATED_RELEVANCE:
            result.warnings.append(
                f"the reference seems unrelated to the image (mean soft attention "
                f"{relevance:.2f}, under {UNRELATED_RELEVANCE}: few of its patches match); "
                "it is used anyway"
            )
        return result

    def _upscale(
        self, lr: np.ndarray, references: References | Sequence[ReferenceFeatures] | None
    ) -> Upscaled:
        h, w = lr.shape[:2]
        lrsr = resize_bicubic(lr, w * SCALE, h * SCALE)
        own = not references
        if own:
            references = [self.encode_reference(lrsr)]
        refs = references if isinstance(references, References) else reference_set(references)
        grids = [(int(r.key.shape[-2]), int(r.key.shape[-1])) for r in refs.features]
        search = self.search_for(h * w, sum(gh * gw for gh, gw in grids))
        plan = self.tile_plan(h, w, refs.features)
        if plan is not None:
            return self._tiled(lr, lrsr, refs, grids, plan, search)
        # As its own reference, the image's query features are its reference's lv3.
        lv3 = refs.features[0].values[2]
        query = lv3 if own and lv3.dtype == refs.features[0].key.dtype else None
        out = self._run(lr, lrsr, refs, search, query)
        sr = to_image(out.sr, bit_depth(lr))
        return Upscaled(sr, 1, {"search": search}, _attention(out), _source(out), grids)

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
        references: References,
        search: str,
        query: torch.Tensor | None = None,
    ) -> TTSROutput:
        with self._autocast():
            return self.model.upscale(
                to_tensor(lr, self.device),
                to_tensor(lrsr, self.device),
                references.features,
                self.search_budget,
                search,
                query,
                references.index,
            )

    def _tiled(
        self,
        lr: np.ndarray,
        lrsr: np.ndarray,
        references: References,
        grids: list[tuple[int, int]],
        plan: TilePlan,
        search: str,
    ) -> Upscaled:
        """The coarse pass, then the fine pass (see :mod:`ttsr_cli.tiles`).  Each tile reads
        its LR crop and the same crop of the whole image's LR-up, so it sees exactly the
        untiled inputs; the maps are the coarse pass's, which holds them whole."""
        progress = Progress(self.device, self.on_tile, len(plan.coarse) + len(plan.fine))
        with self._autocast():
            coarse = self._coarse_pass(lr, lrsr, references, plan, search, progress)
            total = self._fine_pass(coarse, lrsr, references.features, plan.fine, progress)
        sr = to_image(total.unsqueeze(0), bit_depth(lr))
        attention = coarse.S[0, 0].float().cpu().numpy()
        source = coarse.index[0].cpu().numpy()
        result = Upscaled(sr, len(plan.fine), {"search": search}, attention, source, grids)
        if plan.shortfall > 0:
            result.warnings.append(budget_warning(plan.shortfall))
        return result

    def _coarse_pass(
        self,
        lr: np.ndarray,
        lrsr: np.ndarray,
        references: References,
        plan: TilePlan,
        search: str,
        progress: Progress,
    ) -> Coarse:
        """Stages 1 and 2 tile by tile; each tile's core of their outputs goes into maps of
        the whole image.  Each tile's LTE pass runs in bands within the plan's budget."""
        whole: Coarse | None = None
        for tile in plan.coarse:
            ys, xs = tile.read
            lr_t = to_tensor(lr[ys, xs], self.device)
            lrsr_t = to_tensor(lrsr[_hr(ys), _hr(xs)], self.device)
            part = self.model.upscale_coarse(
                lr_t, lrsr_t, references.features, plan.budget, search, references.index
            )
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
        progress: Progress,
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


def _hr(lr_span: slice) -> slice:
    """The output rows (or columns) of LR rows ``lr_span``."""
    return slice(lr_span.start * SCALE, lr_span.stop * SCALE)


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


def load_reference(runner: Runner, path: Path) -> ReferenceFeatures:
    """Read and encode one reference file; any problem with it is a configuration error."""
    try:
        return runner.encode_reference(read_image(path).rgb)
    except InputError as exc:
        detail = str(exc).removeprefix(f"{path}: ")
        raise TTSRError(f"reference {path}: {detail}") from None


class ReferenceCache:
    """Encoded references shared by path across a batch.

    Each reference is read and encoded once; ``uses`` says how many images will ask for it, so
    its features (hundreds of MB for a large reference) are dropped after the last one, with
    the fast-search index of every set it belongs to.  A reference that fails to decode fails
    each image that needs it, as an input error.
    """

    def __init__(self, runner: Runner, uses: Iterable[Path]) -> None:
        self.runner = runner
        self.remaining = Counter(uses)
        self._features: dict[Path, ReferenceFeatures | str] = {}
        self._sets: dict[tuple[Path, ...], References] = {}

    @contextlib.contextmanager
    def borrow(self, paths: Sequence[Path]) -> Iterator[References | None]:
        """The references of ``paths`` for the duration of one image (None for none: the
        image is its own reference)."""
        key = tuple(paths)
        try:
            if key and key not in self._sets:
                self._sets[key] = reference_set([self._get(path) for path in paths])
            yield self._sets.get(key)
        finally:
            for path in paths:
                self.remaining[path] -= 1
                if self.remaining[path] <= 0:
                    self._features.pop(path, None)
                    self._sets = {k: v for k, v in self._sets.items() if path not in k}

    def _get(self, path: Path) -> ReferenceFeatures:
        if path not in self._features:
            if not self.runner.descriptor.takes_reference:
                raise TTSRError(f"reference {path}: this model takes no reference")
            try:
                self._features[path] = load_reference(self.runner, path)
            except TTSRError as exc:
                self._features[path] = str(exc)
        found = self._features[path]
        if isinstance(found, str):
            raise InputError(found)
        return found


def _describe(model: TTSR) -> Descriptor:
    found = describe_ttsr(model)
    assert found is not None, "a TTSRRunner runs a TTSR"
    return found
