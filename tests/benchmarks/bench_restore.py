"""RL-Restore speed and memory per megapixel: ``ttsr restore``'s runner on photos of 0.25,
1 and 4 MP, each case in a fresh process so its peak RSS is its own.

    python tests/benchmarks/bench_restore.py [--sizes 0.25 1 4] [--weights FILE]
        [--budget 512MB] [--json FILE]

Three chains per size: three 3-layer tools (1, 2, 5), three 8-layer tools (3, 4, 7), and
the chain the agent chooses for the photo degraded ``moderate`` (``agent``, what a user
gets).  Each runs with the tools channels-last (what ``ttsr restore`` does) and, as the
baseline in the same process, NCHW; the ratio is channels-last's time over NCHW's.  GFLOP
are the tools' multiply-adds x 2 per pixel; the achieved rate is compared with the best
fp32 matrix product this machine runs (``matmul_peak_gflops``).  The weights are the
authors' (``../shared`` fixture) when there, else the paper configuration seeded at random
(the same speed; the ``agent`` chain is then arbitrary).  The photo is scikit-image's
``astronaut`` resized to the size, degraded by :mod:`ttsr_cli.degrade` (seed 0).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness import matmul_peak_gflops, peak_rss_mib, run_child

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "rl-restore-official" / "tf"
CHAINS = {"3-layer x3": (0, 1, 4), "8-layer x3": (2, 3, 6), "agent": None}


def load_model(weights: str | None):
    """The authors' network (or ``weights``), or the paper configuration at random."""
    import torch

    from ttsr_cli.archs.rlrestore import RLRestore
    from ttsr_cli.weights import load

    source = weights or (str(FIXTURE) if FIXTURE.is_dir() else None)
    if source is not None:
        return source, load(source, expect="rl-restore")[0]
    torch.manual_seed(0)
    return "paper configuration, random weights", RLRestore()


def photo(megapixels: float):
    """The degraded astronaut at ``megapixels`` (4:3), uint8."""
    import numpy as np
    import skimage.data
    from PIL import Image

    from ttsr_cli.degrade import degrade_u8

    width = round((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = round(width * 3 / 4)
    clean = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((width, height)))
    return degrade_u8(clean, "moderate", 0, 0)[0]


def run_chain(runner, image, chain):
    """Seconds of one chain (fixed tools, or the agent's), the tools applied and tiles."""
    import torch

    from ttsr_cli.pixels import to_tensor

    start = time.perf_counter()
    if chain is None:
        result = runner.upscale_detailed(image)
        return time.perf_counter() - start, result.mode["tools"], result.tiles
    with torch.inference_mode():
        x = to_tensor(image, runner.device, signed=False)
        x = x.contiguous(memory_format=runner.layout)
        tiles = 1
        for action in chain:
            x, tiles = runner.apply_tool(action, x)
    return time.perf_counter() - start, [a + 1 for a in chain], tiles


def child(name: str, megapixels: float, weights: str | None, budget: str | None) -> dict:
    import torch

    from ttsr_cli.archs import describe
    from ttsr_cli.devices import parse_size
    from ttsr_cli.run.rlrestore import RLRestoreRunner

    source, model = load_model(weights)
    descriptor = describe(model)
    memory = parse_size(budget) if budget else None
    image = photo(megapixels)
    row: dict = {"chain": name, "megapixels": image.shape[0] * image.shape[1] / 1e6}
    for layout, channels_last in (("nchw", False), ("nhwc", True)):
        runner = RLRestoreRunner(
            model,
            descriptor,
            torch.device("cpu"),
            memory_budget=memory,
            channels_last=channels_last,
        )
        run_chain(runner, image[:64, :64], CHAINS[name])  # warm-up
        seconds, tools, tiles = run_chain(runner, image, CHAINS[name])
        row[f"{layout}_s"], row["tools"], row["tiles"] = seconds, tools, tiles
    macs = sum(sum(p.numel() for p in model.tools[t - 1].parameters()) for t in row["tools"])
    row["gflop"] = 2 * macs * row["megapixels"] * 1e6 / 1e9
    row["weights"], row["peak_rss_mib"] = source, peak_rss_mib()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.25, 1.0, 4.0])
    parser.add_argument("--weights")
    parser.add_argument("--budget", help="--max-memory for the runner (default: half the free)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        row = child(args.child, args.sizes[0], args.weights, args.budget)
        print(json.dumps(row))
        return
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak here: {peak:.0f} GFLOP/s")
    print("| chain | MP | tools | tiles | s/MP NHWC | s/MP NCHW | ratio | GFLOP/s | peak RSS |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for size in args.sizes:
        for name in CHAINS:
            extra = [*(["--weights", args.weights] if args.weights else [])]
            extra += ["--budget", args.budget] if args.budget else []
            row = run_child(__file__, name, "--sizes", str(size), *extra)
            rows.append(row)
            mp, fast, slow = row["megapixels"], row["nhwc_s"], row["nchw_s"]
            tools = ",".join(map(str, row["tools"])) or "none"
            print(
                f"| {name} | {mp:.2f} | {tools} | {row['tiles']} | {fast / mp:.2f} | "
                f"{slow / mp:.2f} | {fast / slow:.2f} | {row['gflop'] / fast:.0f} | "
                f"{row['peak_rss_mib']:.0f} MiB |"
            )
    if args.json:
        args.json.write_text(json.dumps({"matmul_peak_gflops": peak, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
