"""Choosing references: rank a pool of images by how much texture TTSR could borrow from each.

The score of a reference for an input is the relevance TTSR's hard and soft attention use:
the mean, over the input's LR positions, of the best cosine similarity between its 3x3 lv3
patch and any 3x3 lv3 patch of the reference (the mean of S from
:func:`ttsr_cli.archs.ttsr.attention.relevance_search`).  The input is treated as the LR
image, so the query side is the LR up-sampled x4 and the key side the reference down-up,
exactly as the network pairs them.

Features come from a model's LTE when weights are given.  Without weights a fixed descriptor
is used (:func:`texture_features`): high-passed colour at lv3 resolution, because no trained
LTE exists offline, and an untrained one ranked no better on the retrieval benchmark while
taking three times as long (see README, "Choosing references").

Two stages keep pools of hundreds fast: a global colour-and-gradient histogram
(:func:`signature`) keeps the ``candidates`` most similar pool images, and only those are
scored exactly.  Every image is first shrunk so that its lv3 map has at most
``max_positions`` positions: the exact search costs (query positions x key positions).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ttsr_cli.archs.ttsr.attention import relevance_search
from ttsr_cli.archs.ttsr.lte import LTE
from ttsr_cli.archs.ttsr.model import SCALE
from ttsr_cli.atomic import atomic_path
from ttsr_cli.errors import InputError, TTSRError
from ttsr_cli.imageio import read_image, to_8bit
from ttsr_cli.pixels import reference_pair, resize_bicubic, to_tensor

#: lv3 positions (LR pixels) per image; larger images are shrunk, keeping their aspect.
MAX_POSITIONS = 40 * 40
#: Pool images kept by the global prefilter for the exact relevance score.
CANDIDATES = 3
#: Working memory of one relevance search: one block holds a whole capped pair.
SEARCH_BUDGET = 64 << 20
_COLOUR_BINS = 8
_ORIENTATION_BINS = 12
#: Contact-sheet thumbnails fit this square; captions go in a strip below each.
_THUMB = 160
_CAPTION = 16


@dataclass
class Encoded:
    """One image ready for matching: its lv3 feature map and global signature."""

    features: torch.Tensor
    signature: torch.Tensor


@dataclass(frozen=True)
class Match:
    """A pool image and its relevance to one input (mean best patch similarity, <= 1)."""

    ref: Path
    score: float


@dataclass(frozen=True)
class Ranking:
    """The best pool images for one input, best first."""

    input: Path
    matches: tuple[Match, ...]

    def to_dict(self) -> dict:
        ranking = [{"ref": str(m.ref), "score": round(m.score, 6)} for m in self.matches]
        return {"input": str(self.input), "ranking": ranking}


def texture_features(image: torch.Tensor) -> torch.Tensor:
    """Fixed stand-in for LTE lv3 (``[N, 3, H, W]`` in [0, 1] at lv3 resolution).

    Each channel minus its local 5x5 mean: the cosine of raw pixels is dominated by
    brightness, which every sky and wall shares, while the high-passed colour keeps edges and
    texture, what the attention transfers.
    """
    blurred = F.avg_pool2d(F.pad(image, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return image - blurred


def signature(image: torch.Tensor) -> torch.Tensor:
    """Global descriptor of an lv3-resolution image: a joint colour histogram and a histogram
    of gradient orientations weighted by magnitude, each summing to one (compared by
    :func:`affinity`).  Both survive shifts and moderate rescaling of the same scene."""
    pixels = image[0].clamp(0, 1)
    bins = (pixels * (_COLOUR_BINS - 1e-6)).long()
    joint = (bins[0] * _COLOUR_BINS + bins[1]) * _COLOUR_BINS + bins[2]
    colour = torch.bincount(joint.flatten(), minlength=_COLOUR_BINS**3).float()
    grey = pixels.mean(dim=0)
    dy, dx = grey[1:, :-1] - grey[:-1, :-1], grey[:-1, 1:] - grey[:-1, :-1]
    angle = torch.atan2(dy, dx) % math.pi  # an edge and its reverse are the same texture
    sector = (angle / math.pi * _ORIENTATION_BINS).long().clamp_max(_ORIENTATION_BINS - 1)
    weight = torch.hypot(dx, dy).flatten()
    gradient = torch.bincount(sector.flatten(), weights=weight, minlength=_ORIENTATION_BINS)
    return torch.cat([_normalised(colour), _normalised(gradient.float())])


def _normalised(histogram: torch.Tensor) -> torch.Tensor:
    return histogram / histogram.sum().clamp_min(1e-12)


def affinity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Bhattacharyya coefficient of the histograms in ``a`` (``[D]``) and each row of ``b``."""
    return (a.sqrt() * b.sqrt()).sum(dim=-1)


def fit_positions(rgb: np.ndarray, max_positions: int, cell: int) -> np.ndarray:
    """``rgb`` shrunk (bicubic) so that it has at most ``max_positions`` cells of
    ``cell x cell`` pixels (lv3 positions); unchanged when it already fits."""
    h, w = rgb.shape[:2]
    positions = (h // cell) * (w // cell)
    if positions <= max_positions:
        return rgb
    factor = math.sqrt(max_positions / positions)
    width, height = max(cell, int(w * factor)), max(cell, int(h * factor))
    return resize_bicubic(rgb, width, height)


class Matcher:
    """Encodes inputs and pool images, and ranks a pool for an input.

    ``lte``: a model's texture extractor; without one, ``descriptor`` maps an lv3-resolution
    image in [0, 1] to its features (default :func:`texture_features`).
    """

    def __init__(
        self,
        lte: LTE | None = None,
        device: torch.device | None = None,
        candidates: int = CANDIDATES,
        max_positions: int = MAX_POSITIONS,
        descriptor: Callable[[torch.Tensor], torch.Tensor] = texture_features,
    ) -> None:
        self.device = device or torch.device("cpu")
        self.descriptor = descriptor
        self.lte = None if lte is None else lte.to(self.device).eval()
        self.candidates = candidates
        self.max_positions = max_positions

    @torch.inference_mode()
    def encode_input(self, rgb: np.ndarray) -> Encoded:
        """The query side: the input as LR, up-sampled x4 as the network sees it."""
        lr = fit_positions(rgb, self.max_positions, 1)
        h, w = lr.shape[:2]
        return self._encode(resize_bicubic(lr, w * SCALE, h * SCALE))

    @torch.inference_mode()
    def encode_reference(self, rgb: np.ndarray) -> Encoded:
        """The key side: the reference down x4 and up again, as the network sees it."""
        _, refsr = reference_pair(fit_positions(rgb, self.max_positions, SCALE))
        return self._encode(refsr)

    def _encode(self, up: np.ndarray) -> Encoded:
        image = (to_tensor(up, self.device) + 1) / 2
        small = F.avg_pool2d(image, SCALE)  # lv3 resolution
        features = self.descriptor(small) if self.lte is None else self.lte.lv3(image)
        return Encoded(features=features, signature=signature(small))

    @torch.inference_mode()
    def relevance(self, query: Encoded, key: Encoded) -> float:
        """Mean over the query's positions of its best patch similarity in ``key``."""
        match = relevance_search(query.features, [key.features], SEARCH_BUDGET)
        return float(match.score.mean())

    def shortlist(self, query: Encoded, pool: Sequence[Encoded], keep: int) -> list[int]:
        """Indices of the ``keep`` pool images whose signatures are closest, best first."""
        similarity = affinity(query.signature, torch.stack([p.signature for p in pool]))
        return similarity.topk(min(keep, len(pool))).indices.tolist()

    def rank(self, query: Encoded, pool: Sequence[tuple[Path, Encoded]], top: int) -> list[Match]:
        """The ``top`` best pool images for ``query``, best first.  The prefilter keeps
        ``candidates`` (at least ``top``) pool images; those are ranked by exact score (ties
        by pool order, so results are deterministic)."""
        if not pool:
            return []
        keep = max(self.candidates, top)
        chosen = sorted(self.shortlist(query, [encoded for _, encoded in pool], keep))
        scored = [Match(pool[i][0], self.relevance(query, pool[i][1])) for i in chosen]
        return sorted(scored, key=lambda m: -m.score)[:top]


def encode_pool(
    matcher: Matcher, paths: Sequence[Path], on_error: Callable[[str], None]
) -> list[tuple[Path, Encoded]]:
    """Each readable pool image encoded once (reused for every input); each unreadable one
    reported through ``on_error`` with one line and left out."""
    pool = []
    for path in paths:
        try:
            pool.append((path, matcher.encode_reference(read_image(path).rgb)))
        except InputError as exc:
            on_error(f"pool image {_located(path, exc)}")
    return pool


def rank_inputs(
    matcher: Matcher,
    inputs: Sequence[Path],
    pool: Sequence[tuple[Path, Encoded]],
    top: int,
    on_error: Callable[[str], None],
) -> list[Ranking]:
    """A ranking for each readable input; each unreadable one reported and left out."""
    rankings = []
    for path in inputs:
        try:
            query = matcher.encode_input(read_image(path).rgb)
        except InputError as exc:
            on_error(_located(path, exc))
            continue
        other = [(ref, encoded) for ref, encoded in pool if ref.resolve() != path.resolve()]
        rankings.append(Ranking(path, tuple(matcher.rank(query, other, top))))
    return rankings


def _located(path: Path, exc: InputError) -> str:
    """``PATH: reason``, whether or not the message already named the file."""
    return f"{path}: {str(exc).removeprefix(f'{path}: ')}"


def write_ref_map(rankings: Sequence[Ranking], path: Path) -> None:
    """``input,ref1,ref2,...`` rows that ``ttsr upscale --ref-map`` reads as they are: paths
    relative to the CSV's folder (as batch.py resolves them), so the map moves with them."""
    base = Path(os.path.abspath(path)).parent
    width = max((len(r.matches) for r in rankings), default=0)
    header = ["input", *(f"ref{n}" for n in range(1, width + 1))]
    with _writing("--csv", path), atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for ranking in rankings:
            if ranking.matches:
                refs = [_relative(m.ref, base) for m in ranking.matches]
                writer.writerow([_relative(ranking.input, base), *refs])


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to ``base``; absolute where no relative path exists (another drive)."""
    try:
        return os.path.relpath(os.path.abspath(path), base)
    except ValueError:
        return os.path.abspath(path)


def copy_top(rankings: Sequence[Ranking], folder: Path) -> None:
    """Each input's references into ``folder/STEM/``, named ``01_NAME`` by rank."""
    for ranking in rankings:
        target = folder / ranking.input.stem
        with _writing("--copy-to", target):
            target.mkdir(parents=True, exist_ok=True)
            for rank, match in enumerate(ranking.matches, start=1):
                shutil.copyfile(match.ref, target / f"{rank:02d}_{match.ref.name}")


def contact_sheet(rankings: Sequence[Ranking], path: Path) -> None:
    """A PNG with a row per input: the input, then its references with rank and score."""
    columns = 1 + max((len(r.matches) for r in rankings), default=0)
    cell_h = _THUMB + _CAPTION
    sheet = Image.new("RGB", (columns * _THUMB, max(1, len(rankings)) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for row, ranking in enumerate(rankings):
        cells = [(ranking.input, f"input {ranking.input.name}")]
        cells += [
            (m.ref, f"#{n} {m.score:.3f} {m.ref.name}") for n, m in enumerate(ranking.matches, 1)
        ]
        for column, (image_path, caption) in enumerate(cells):
            x, y = column * _THUMB, row * cell_h
            sheet.paste(_thumbnail(image_path), (x, y))
            draw.text((x + 2, y + _THUMB + 2), caption[:26], fill="black")
    with _writing("--sheet", path), atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def _thumbnail(path: Path) -> Image.Image:
    """The image scaled to fit the thumbnail square, small inputs enlarged so they can be
    compared with their references (read again: features are not pixels)."""
    image = Image.fromarray(to_8bit(read_image(path).rgb))
    factor = _THUMB / max(image.size)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.BICUBIC)


@contextlib.contextmanager
def _writing(option: str, path: Path) -> Iterator[None]:
    """An output that cannot be written is a configuration error naming the option."""
    try:
        yield
    except OSError as exc:
        raise TTSRError(f"{option} {path}: cannot write it ({exc})") from None
