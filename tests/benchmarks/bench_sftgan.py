"""SFT-GAN: the whole pipeline's time and peak memory, and what tiling the segmentation costs.

    python tests/benchmarks/bench_sftgan.py speed [--sides 64 128 250] [--threads 2]
    python tests/benchmarks/bench_sftgan.py seams [--side 250] [--margins 32 64 128]

``speed``: ``ttsr upscale LR.png -w GENERATOR --seg-weights SEGMENTATION`` in a fresh process
per size, as a user runs it (loading both networks included), wall time and peak RSS, for
square crops of a scikit-image photo; the official figures (each of its two scripts its own
process, same machine) are printed beside.  ``seams``: the segmentation of one LR photo
whole and in tiles of 64 LR pixels (256 output pixels) with each margin: how far the
probabilities move, how many arg-max classes flip, and how many 8-bit output levels the
generator's image moves.  Both use the ``../shared`` fixture: its generator (Torch layout)
and its seeded random segmentation weights, which cost what the published ones cost but see
differently, so the seam figures describe this network shape, not the published weights.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "sftgan-official"
GENERATOR = FIXTURE / "generator_sftgan_torch.pth"
#: The official pipeline's (segmentation, generator) seconds and GB, from the issue.
OFFICIAL = {
    64: ((2.0, 0.64), (1.4, 0.32)),
    128: ((3.2, 0.64), (1.9, 0.49)),
    250: ((9.7, 1.1), (3.4, 1.1)),
}
PEAK = (
    "import resource, runpy, sys; sys.argv = ['ttsr', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('ttsr_cli', run_name='__main__')\n"
    "finally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
)


def segmentation_weights(folder: Path) -> Path:
    """The fixture's seeded segmentation weights, written by its own script (about 209 MB)."""
    out = folder / "seg.pth"
    script = FIXTURE / "make_seg_weights.py"
    subprocess.run(
        [sys.executable, str(script), str(FIXTURE / "seg_keys.json"), str(out)],
        check=True,
        capture_output=True,
    )
    return out


def photo(side: int) -> np.ndarray:
    import skimage.data

    image = skimage.data.astronaut()
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BICUBIC))


def speed(args: argparse.Namespace, folder: Path) -> None:
    seg = segmentation_weights(folder)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    print("| LR -> SR | ttsr (s) | peak RSS (GB) | official total (s) | ratio |")
    print("|---|---|---|---|---|")
    for side in args.sides:
        lr = folder / f"lr{side}.png"
        Image.fromarray(photo(side)).save(lr)
        command = [sys.executable, "-c", PEAK, "upscale", str(lr), "-w", str(GENERATOR)]
        command += [
            "--seg-weights",
            str(seg),
            "-o",
            str(folder / f"sr{side}.png"),
            "--device",
            "cpu",
            "-q",
        ]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        seconds = time.perf_counter() - start
        peak_gb = int(done.stderr.strip().splitlines()[-1]) / 2**20
        official = sum(stage[0] for stage in OFFICIAL.get(side, ((float("nan"), 0),) * 2))
        cells = (f"{side} -> {4 * side}", f"{seconds:.1f}", f"{peak_gb:.2f}", f"{official:.1f}")
        print("| " + " | ".join(cells) + f" | {seconds / official:.2f} |")


def seams(args: argparse.Namespace, folder: Path) -> None:
    from ttsr_cli.archs.sftgan.load import load_segmentation
    from ttsr_cli.pixels import to_image
    from ttsr_cli.run.common import Progress
    from ttsr_cli.run.sftgan import SFTGANRunner
    from ttsr_cli.weights import load, read_checkpoint

    torch.set_num_threads(args.threads)
    model, descriptor = load(GENERATOR)
    segmentation = load_segmentation(read_checkpoint(segmentation_weights(folder))[0])
    rgb = photo(args.side).astype(np.float64) / 255
    cpu = torch.device("cpu")
    whole_runner = SFTGANRunner(model, descriptor, segmentation, cpu)
    side = 4 * args.side
    with torch.inference_mode():
        exact = whole_runner.priors(
            rgb, whole_runner.segmentation_tiles(side, side), Progress(cpu, None, 1)
        )
        gen_tiles = whole_runner.generator_tiles(args.side, args.side)
        reference = to_image(
            whole_runner.generate(rgb, exact, gen_tiles, Progress(cpu, None, 9)), 8, signed=False
        )
        print(
            "| margin (output px) | tiles | max prob. change | mean | arg-max flips "
            "| output levels: max | mean | changed |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for margin in args.margins:
            runner = SFTGANRunner(model, descriptor, segmentation, cpu, tile=64, seg_margin=margin)
            tiles = runner.segmentation_tiles(side, side)
            tiled = runner.priors(rgb, tiles, Progress(cpu, None, len(tiles)))
            out = to_image(
                runner.generate(rgb, tiled, gen_tiles, Progress(cpu, None, 9)), 8, signed=False
            )
            change = (exact - tiled).abs()
            flips = float((exact.argmax(1) != tiled.argmax(1)).float().mean())
            levels = np.abs(out.astype(np.int16) - reference)
            cells = (
                margin,
                len(tiles),
                f"{float(change.max()):.2e}",
                f"{float(change.mean()):.2e}",
            )
            cells += (f"{flips:.3%}", levels.max(), f"{levels.mean():.3f}")
            print("| " + " | ".join(map(str, cells)) + f" | {(levels > 0).mean():.2%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    fast = verbs.add_parser("speed")
    fast.add_argument("--sides", type=int, nargs="+", default=[64, 128, 250])
    fast.add_argument("--threads", type=int, default=2)
    cut = verbs.add_parser("seams")
    cut.add_argument("--side", type=int, default=250)
    cut.add_argument("--margins", type=int, nargs="+", default=[32, 64, 128])
    cut.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        (speed if args.verb == "speed" else seams)(args, Path(folder))


if __name__ == "__main__":
    main()
