"""Does the model transfer texture from the reference, or only interpolate?  (Urban100, seeded)

Held-out pairs: for each Urban100 image, the LR is the x4 Pillow-bicubic reduction of a 256 px
HR crop and its *true* reference is a 256 px crop of the same image shifted 64-128 px in a
random direction and rescaled 0.8-1.2x (the retrieval pairs of ``bench_match_ref.py``): part
of the crop's exact texture is in it, the rest only in similar structures.  The *unrelated*
reference of pair i is the true reference of pair i + N/2 (another image).  The same LR is
upscaled with each, and with itself as reference; the reference effect is the mean PSNR
(TTSR protocol: Y channel over the whole image, no border cut, as the TTSR authors'
``calc_psnr_and_ssim``) with the true reference minus with the unrelated one, with a 95%
confidence interval over pairs.  Mean soft attention (how confident the
matches were) is printed beside, and the hard attention's accuracy with the true reference:
the share of LR positions whose true place lies inside the reference (known from how the
pair was cut) for which the search picked that place, within one LR pixel.

    python tests/benchmarks/bench_reference_effect.py [--weights FILE | --model NAME]
        [--data DIR] [--pairs N] [--search exact|fast]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_match_ref import CROP, DEFAULT_DATA, Placement, retrieval_cases

from ttsr_cli import registry
from ttsr_cli.archs.ttsr.model import SCALE
from ttsr_cli.metrics import score
from ttsr_cli.pixels import resize_bicubic
from ttsr_cli.run.ttsr import TTSRRunner
from ttsr_cli.weights import load as load_weights


def measure(
    upscaler: TTSRRunner,
    hr: np.ndarray,
    refs: dict[str, np.ndarray | None],
    placement: Placement,
) -> dict:
    """PSNR of bicubic and of the model with each named reference (None: self-reference),
    the mean soft attention of each run, and the hard attention's accuracy with "true"."""
    lr = resize_bicubic(hr, CROP // SCALE, CROP // SCALE)
    row = {"bicubic": score(resize_bicubic(lr, CROP, CROP), hr).psnr}
    for name, ref in refs.items():
        encoded = [] if ref is None else [upscaler.encode_reference(ref)]
        result = upscaler.upscale_detailed(lr, encoded)
        row[name] = score(result.sr, hr).psnr
        row[f"{name} S"] = float(result.attention.mean())
        if name == "true":
            row["accuracy"] = hard_attention_accuracy(result.source, result.grids[0], placement)
    return row


def measure_pairs(upscaler: TTSRRunner, pairs: list) -> list[dict]:
    """:func:`measure`'s row for each pair, with itself, the unrelated reference (the true
    reference of the pair half the list away) and the true one."""
    rows = []
    for i, (hr, ref, placement) in enumerate(pairs):
        other = pairs[(i + len(pairs) // 2) % len(pairs)][1]
        refs = {"self": None, "unrelated": other, "true": ref}
        rows.append(measure(upscaler, hr, refs, placement))
    return rows


def hard_attention_accuracy(
    source: np.ndarray, grid: tuple[int, int], placement: Placement
) -> float:
    """Share of LR positions, among those whose true place is inside the reference's lv3
    ``grid``, whose matched position ``source`` is within one LR pixel of it."""
    rows, cols = np.mgrid[0 : source.shape[0], 0 : source.shape[1]]
    centre = (SCALE - 1) / 2  # an LR pixel's centre in HR pixels, from its first HR pixel
    ty, tx = placement.in_reference(SCALE * rows + centre, SCALE * cols + centre)
    ty, tx = (ty - centre) / SCALE, (tx - centre) / SCALE
    inside = (ty >= 0.5) & (ty <= grid[0] - 1.5) & (tx >= 0.5) & (tx <= grid[1] - 1.5)
    py, px = np.divmod(source, grid[1])
    hit = (np.abs(py - ty) <= 1) & (np.abs(px - tx) <= 1)
    return float(hit[inside].mean()) if inside.any() else float("nan")


def summary(rows: list[dict]) -> list[str]:
    """Markdown table of means, and the true-minus-unrelated effect with its 95% interval."""
    names = ["bicubic", "self", "unrelated", "true"]
    lines = ["| reference | PSNR (dB) | mean soft attention |", "|---|---:|---:|"]
    for name in names:
        psnr = statistics.fmean(r[name] for r in rows)
        mean_s = statistics.fmean(r[f"{name} S"] for r in rows) if name != "bicubic" else None
        attention = "" if mean_s is None else f"{mean_s:.3f}"
        lines.append(f"| {name} | {psnr:.3f} | {attention} |")
    effect = [r["true"] - r["unrelated"] for r in rows]
    half = 1.96 * statistics.stdev(effect) / math.sqrt(len(effect)) if len(effect) > 1 else 0.0
    wins = sum(e > 0 for e in effect)
    accuracy = statistics.fmean(r["accuracy"] for r in rows if not math.isnan(r["accuracy"]))
    lines.append(
        f"\nReference effect (true - unrelated) over {len(rows)} pairs: "
        f"{statistics.fmean(effect):+.3f} dB (95% CI +-{half:.3f}); "
        f"true better on {wins}/{len(rows)}; hard-attention accuracy with the true reference "
        f"{100 * accuracy:.1f}%"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--weights", help="Checkpoint file (default: the bundled model).")
    parser.add_argument("--model", help="A registry model name.")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--search", default="exact", choices=("exact", "fast"))
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"{args.data}: Urban100 folder not found (give --data)")
    weights = registry.resolve(args.model, args.weights)
    upscaler = TTSRRunner(load_weights(weights)[0], torch.device("cpu"), search=args.search)
    pairs = retrieval_cases(args.data, limit=args.pairs)
    if len(pairs) < 2:
        sys.exit("need at least two pairs")
    start = time.perf_counter()
    rows = measure_pairs(upscaler, pairs)
    print(
        f"{weights.name}, {len(rows)} Urban100 pairs, {args.search} search, "
        f"{time.perf_counter() - start:.0f} s"
    )
    print("\n".join(summary(rows)))


if __name__ == "__main__":
    main()
