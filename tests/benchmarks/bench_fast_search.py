"""Fast vs exact relevance search alone, on a real photo pair of the 1000x664 case (issue #6).

``bench_speed.py`` times the whole pipeline on random pixels, where no two neighbours' matches
agree: the fast search's worst case.  This times only the search on photo content: the LR is a
1000x664 crop of the first Urban100 image at least 1040x720, reduced x4 (250x166); the
reference is the 1000x664 crop 40 px up and 30 px left of it.  Both go through the paper's
LTE (seeded random weights: speed does not depend on them).  Prints the exact search's time,
and for 0 and 1 propagation passes the fast search's time (best of 3), speed-up, share of
positions matched as exactly, and mean loss of relevance.

    python tests/benchmarks/bench_fast_search.py [--data DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ttsr_cli.archs.ttsr import fast_search
from ttsr_cli.archs.ttsr.attention import relevance_search
from ttsr_cli.archs.ttsr.lte import LTE
from ttsr_cli.pixels import resize_bicubic

DEFAULT_DATA = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "Urban100"
BUDGET = 1 << 30


def photo_pair(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(HR crop 1000x664, reference crop 1000x664 shifted by (40, 30)) from one Urban100 image."""
    for path in sorted(folder.glob("*.png")):
        with Image.open(path) as image:
            if image.size[0] >= 1040 and image.size[1] >= 720:
                pixels = np.asarray(image.convert("RGB"))
                return pixels[40:704, 30:1030], pixels[0:664, 0:1000]
    sys.exit(f"{folder}: no image of at least 1040x720")


def features(hr: np.ndarray, ref: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """LTE lv3 of the LR up-sampled (query) and of the reference down-up (key)."""
    lrsr = resize_bicubic(resize_bicubic(hr, 250, 166), 1000, 664)
    refsr = resize_bicubic(resize_bicubic(ref, 250, 166), 1000, 664)
    torch.manual_seed(0)
    lte = LTE().eval()

    def lv3(a: np.ndarray) -> torch.Tensor:
        return lte.lv3(torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255)

    with torch.no_grad():
        return lv3(lrsr), lv3(refsr)


def best_of(runs: int, fn, *args):
    times, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    query, key = features(*photo_pair(args.data))
    with torch.no_grad():
        exact_s, exact = best_of(1, relevance_search, query, [key], BUDGET)
        size = f"{query.shape[-1]}x{query.shape[-2]}"
        print(f"exact search: {exact_s:.2f} s ({size} positions each)")
        print("| passes | fast search s | speed-up | same match | mean relevance lost |")
        print("|---:|---:|---:|---:|---:|")
        default = fast_search.PROPAGATION_PASSES
        for passes in (0, 1):
            fast_search.PROPAGATION_PASSES = passes
            fast_search.fast_relevance_search(query, [key], BUDGET)  # warm-up
            fast_s, fast = best_of(3, fast_search.fast_relevance_search, query, [key], BUDGET)
            same = (fast.index == exact.index).float().mean().item()
            lost = (exact.score - fast.score).mean().item()
            mark = " (default)" if passes == default else ""
            speedup = exact_s / fast_s
            print(f"| {passes}{mark} | {fast_s:.2f} | {speedup:.1f}x | {same:.3f} | {lost:.5f} |")
        fast_search.PROPAGATION_PASSES = default


if __name__ == "__main__":
    main()
