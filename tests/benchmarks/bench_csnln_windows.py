"""What windowed attention costs CSNLN against exact attention, on real images.

    python tests/benchmarks/bench_csnln_windows.py [--weights MODEL | --fixture-scale 2]
        [--datasets Urban100 Set14] [--limit N] [--crop 384] [--tiles 0 32]

For each image, the centre ``crop`` x ``crop`` of the ground truth (cut to a multiple of the
scale) is reduced with Pillow's bicubic and super-resolved with exact attention over the
whole crop, and with windowed attention: the default windows (tile 0) and each forced
window side of ``--tiles``.  Columns: PSNR and SSIM against the ground truth, as
``ttsr evaluate --protocol sisr`` (luminance, ``scale`` pixels of border cut), their change
from exact, the PSNR between the windowed and the exact output (how far windows move the
result, meaningful for any weights), and the time per image.  Without ``--weights``, the
official configuration with the CSNLN fixture's stand-in weights is used: its outputs are
not meant to resemble the ground truth, only the agreement column is then informative.
Images come from ``../shared/datasets``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from ttsr_cli import archs
from ttsr_cli.data import image_files
from ttsr_cli.imageio import read_rgb
from ttsr_cli.metrics import psnr_rgb, score
from ttsr_cli.pixels import degrade
from ttsr_cli.run.csnln import CSNLNRunner
from ttsr_cli.weights import load

SHARED = Path(__file__).resolve().parents[3] / "shared"
DATASETS = SHARED / "datasets"
FIXTURE = SHARED / "fixtures" / "csnln-official"


def fixture_model(scale: int):
    """The official configuration with the fixture's deterministic weights."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_weights", FIXTURE / "make_weights.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return archs.load(module.make_state_dict(str(FIXTURE / f"keys_x{scale}.json")))


def centre_crop(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(side, h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def measure(runners: dict[str, CSNLNRunner], paths: list[Path], crop: int) -> dict[str, dict]:
    """Per setting: mean PSNR, SSIM and seconds over ``paths``, and for windowed settings the
    mean PSNR of their output against the exact one (``agree``); ``exact`` runs first."""
    scale = next(iter(runners.values())).scale
    sums: dict[str, dict[str, list[float]]] = {
        k: {"psnr": [], "ssim": [], "s": [], "agree": []} for k in runners
    }
    sums["bicubic"] = {"psnr": [], "ssim": [], "s": []}
    for path in paths:
        hr, lr, bicubic = degrade(centre_crop(read_rgb(path), crop), scale)
        base = score(bicubic, hr, "sisr", scale)
        sums["bicubic"]["psnr"].append(base.psnr)
        sums["bicubic"]["ssim"].append(base.ssim)
        sums["bicubic"]["s"].append(0.0)
        exact = None
        for name, runner in runners.items():
            start = time.perf_counter()
            sr = runner.upscale(lr)
            seconds = time.perf_counter() - start
            if exact is None:
                exact = sr
            else:
                sums[name]["agree"].append(psnr_rgb(sr, exact))
            result = score(sr, hr, "sisr", scale)
            sums[name]["psnr"].append(result.psnr)
            sums[name]["ssim"].append(result.ssim)
            sums[name]["s"].append(seconds)
    return {k: {m: float(np.mean(v)) for m, v in d.items() if v} for k, d in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--fixture-scale", type=int, default=2, choices=(2, 3, 4))
    parser.add_argument("--datasets", nargs="+", default=["Urban100", "Set14"])
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--crop", type=int, default=384)
    parser.add_argument("--tiles", nargs="+", type=int, default=[0, 32])
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, descriptor = load(args.weights) if args.weights else fixture_model(args.fixture_scale)
    title = args.weights.name if args.weights else "fixture weights, official configuration"
    cpu = torch.device("cpu")
    runners = {"exact": CSNLNRunner(model, descriptor, cpu, attention="exact")}
    for tile in args.tiles:
        name = "windowed" if tile == 0 else f"windowed, tile {tile}"
        runners[name] = CSNLNRunner(model, descriptor, cpu, tile=tile or None, attention="windowed")
    side = args.crop // descriptor.scale
    print(f"{title}: x{descriptor.scale}, centre {args.crop} px crops (LR {side} px)")
    print(
        "| set | images | setting | windows | PSNR | SSIM | vs exact dB | PSNR to exact | s/image |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for name in args.datasets:
        paths = image_files(DATASETS / name)[: args.limit]
        means = measure(runners, paths, args.crop)
        for setting, m in means.items():
            runner = runners.get(setting)
            count = (
                1
                if runner is None or setting == "exact"
                else len(runner.windows(side, side, 1 << 40))
            )
            delta = m["psnr"] - means["exact"]["psnr"]
            agree = "" if setting in ("bicubic", "exact") else f"{m['agree']:.1f}"
            print(
                f"| {name} | {len(paths)} | {setting} | {count} | {m['psnr']:.3f} | "
                f"{m['ssim']:.4f} | {delta:+.3f} | {agree} | {m['s']:.1f} |"
            )


if __name__ == "__main__":
    main()
