"""Each RL-Restore tool's PSNR gain on its own distortion band, a model's against the
authors': how far a trained toolbox is from theirs, tool by tool, before the agent exists.

    python tests/benchmarks/bench_tool_bands.py WEIGHTS [--data DIR] [--crops 32]

WEIGHTS: any RL-Restore weights ttsr loads (a run's ``model.safetensors`` or a training
checkpoint ``step-N.pt``).  For each tool, ``--crops`` 96x96 crops of the held-out photos
(BSD68 by default; seeded) get that tool's distortion alone at a level drawn from its band
(:func:`ttsr_cli.train.rlrestore.tool_bands`, our reading of what the authors' tools do), and
the gain is 10 log10 of the MSE before over after, pooled over the crops.  The authors' tools
come from the ``../shared`` fixture.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ttsr_cli.degrade import degrade_one
from ttsr_cli.imageio import read_rgb
from ttsr_cli.train.pairs import list_images
from ttsr_cli.train.rlrestore import pooled_gain, tool_bands
from ttsr_cli.weights import load

ROOT = Path(__file__).resolve().parents[2]
AUTHORS = ROOT.parent / "shared" / "fixtures" / "rl-restore-official" / "tf"
DATA = ROOT.parent / "shared" / "datasets" / "BSD68"
SIDE = 96


def band_batch(images: list[np.ndarray], band: tuple[str, int, int], count: int, rng):
    """``count`` clean crops and the same crops with the band's distortion, ``[N, 3, S, S]``."""
    distortion, first, last = band
    clean, damaged = [], []
    for _ in range(count):
        image = images[int(rng.integers(len(images)))]
        y = int(rng.integers(0, image.shape[0] - SIDE))
        x = int(rng.integers(0, image.shape[1] - SIDE))
        crop = image[y : y + SIDE, x : x + SIDE]
        hurt = degrade_one(crop, distortion, int(rng.integers(first, last + 1)), rng)
        clean.append(torch.from_numpy(crop.copy()).permute(2, 0, 1).float() / 255)
        damaged.append(torch.from_numpy(np.ascontiguousarray(hurt)).permute(2, 0, 1))
    return torch.stack(clean), torch.stack(damaged)


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--crops", type=int, default=32)
    args = parser.parse_args()
    ours = load(args.weights, expect="rl-restore")[0]
    theirs = load(AUTHORS, expect="rl-restore")[0]
    images = [read_rgb(path) for path in list_images(args.data)]
    rng = np.random.default_rng(0)
    print("| tool | distortion | levels | ours (dB) | authors (dB) |")
    print("|---|---|---|---|---|")
    for k, band in enumerate(tool_bands(len(ours.tools))):
        clean, damaged = band_batch(images, band, args.crops, rng)
        gains = [pooled_gain(model.tools[k](damaged), damaged, clean) for model in (ours, theirs)]
        print(f"| {k + 1} | {band[0]} | {band[1]}-{band[2]} | {gains[0]:+.2f} | {gains[1]:+.2f} |")


if __name__ == "__main__":
    main()
