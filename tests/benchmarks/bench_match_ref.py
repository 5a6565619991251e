"""Retrieval benchmark for ``ttsr match-ref`` on Urban100 (seeded, deterministic).

For each of the 100 images: the query is the LR (x4 Pillow-bicubic down) of a 256 px HR crop;
its true reference is a 256 px crop of the same image shifted 64-128 px in a random direction
and rescaled 0.8-1.2x.  The pool of every query is the 100 true references (1 true, 99 from
other images).  Prints top-1 accuracy and wall time for the default matcher, and for a
raw-pixel patch-matching baseline (plain RGB through the same search) over 3 and 40
prefiltered candidates, and optionally a checkpoint's LTE.

    python tests/benchmarks/bench_match_ref.py [--data DIR] [--weights CHECKPOINT]
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ttsr_cli.matching import CANDIDATES, Matcher
from ttsr_cli.weights import load as load_weights

CROP = 256
DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "Urban100"


def retrieval_set(folder: Path, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(queries, true references), query i matching reference i."""
    queries, refs = [], []
    for query, ref in retrieval_pairs(folder, seed):
        small = Image.fromarray(query).resize((CROP // 4, CROP // 4), Image.BICUBIC)
        queries.append(np.asarray(small))
        refs.append(ref)
    return queries, refs


def retrieval_pairs(
    folder: Path, seed: int = 0, limit: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(HR query crop, its true reference) for the first ``limit`` images (default all); the
    first pairs are the same whatever the limit, so other benchmarks can take a prefix."""
    return [(query, ref) for query, ref, _ in retrieval_cases(folder, seed, limit)]


def retrieval_cases(
    folder: Path, seed: int = 0, limit: int | None = None
) -> list[tuple[np.ndarray, np.ndarray, Placement]]:
    """The pairs of :func:`retrieval_pairs`, each with where its reference was cut."""
    rng = random.Random(seed)
    return [
        _pair(np.asarray(Image.open(path).convert("RGB")), rng)
        for path in sorted(folder.glob("*.png"))[:limit]
    ]


@dataclass(frozen=True)
class Placement:
    """The reference is the query's image shifted by (dy, dx) HR pixels, then resized from
    ``CROP`` to ``side`` pixels."""

    dy: int
    dx: int
    side: int

    def in_reference(self, y: float, x: float) -> tuple[float, float]:
        """Where query pixel (y, x) (centre coordinates) lies in the reference."""
        ratio = self.side / CROP
        return (y - self.dy + 0.5) * ratio - 0.5, (x - self.dx + 0.5) * ratio - 0.5


def _pair(hr: np.ndarray, rng: random.Random) -> tuple[np.ndarray, np.ndarray, Placement]:
    """A query crop and its shifted, rescaled reference crop, both inside ``hr``."""
    h, w = hr.shape[:2]
    while True:
        angle, shift = rng.uniform(0, 2 * math.pi), rng.uniform(64, 128)
        dx, dy = round(shift * math.cos(angle)), round(shift * math.sin(angle))
        x0 = rng.randint(max(0, -dx), w - CROP - max(0, dx))
        y0 = rng.randint(max(0, -dy), h - CROP - max(0, dy))
        if x0 >= 0 and y0 >= 0:
            break
    scale = rng.uniform(0.8, 1.2)
    ref = hr[y0 + dy : y0 + dy + CROP, x0 + dx : x0 + dx + CROP]
    side = round(CROP * scale)
    ref = np.asarray(Image.fromarray(ref).resize((side, side), Image.BICUBIC))
    return hr[y0 : y0 + CROP, x0 : x0 + CROP], ref, Placement(dy, dx, side)


def raw_pixels(image: torch.Tensor) -> torch.Tensor:
    """The baseline's features: plain RGB in [0, 1] at lv3 resolution."""
    return image


def evaluate(
    matcher: Matcher, queries: list[np.ndarray], refs: list[np.ndarray]
) -> tuple[float, float, float]:
    """(top-1 accuracy, prefilter recall at the matcher's candidates, seconds for all)."""
    start = time.perf_counter()
    pool = [(Path(str(i)), matcher.encode_reference(ref)) for i, ref in enumerate(refs)]
    hits = recalled = 0
    for i, query in enumerate(queries):
        encoded = matcher.encode_input(query)
        recalled += i in matcher.shortlist(encoded, [e for _, e in pool], matcher.candidates)
        hits += matcher.rank(encoded, pool, 1)[0].ref == Path(str(i))
    n = len(queries)
    return hits / n, recalled / n, time.perf_counter() - start


def matchers(weights: Path | None) -> list[tuple[str, Matcher]]:
    """The default at several prefilter sizes, the raw-pixel baseline, and optionally an LTE."""
    rows = [
        (f"texture{' (default)' * (m == CANDIDATES)}", Matcher(candidates=m)) for m in (1, 2, 3)
    ]
    rows += [("raw pixels", Matcher(candidates=m, descriptor=raw_pixels)) for m in (3, 40)]
    if weights:
        rows.append((f"LTE of {weights.name}", Matcher(load_weights(weights)[0].LTE)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--weights", type=Path, help="Also measure this checkpoint's LTE.")
    args = parser.parse_args()
    torch.manual_seed(0)
    queries, refs = retrieval_set(args.data)
    print(f"{len(queries)} queries x {len(refs)} pool images, {torch.get_num_threads()} threads")
    print("| features | candidates | prefilter recall | top-1 | wall time |")
    print("|---|---:|---:|---:|---:|")
    for name, matcher in matchers(args.weights):
        top1, recall, seconds = evaluate(matcher, queries, refs)
        row = f"| {name} | {matcher.candidates} | {recall:.0%} | {top1:.0%} | {seconds:.1f} s |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
