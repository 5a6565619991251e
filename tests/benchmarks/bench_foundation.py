"""Wall time and peak memory of one x4 upscale, paper configuration, random weights.

Each case runs in a fresh process so that its peak RSS is its own:

    python tests/benchmarks/bench_foundation.py            # cases a and b
    python tests/benchmarks/bench_foundation.py --case b

Prints a Markdown table: LR and Ref size, relevance-search size, upscale wall time (model built,
images in memory), whole-process wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

CASES = {
    "a": ((120, 80), (480, 320)),  # CUFED5 size
    "b": ((250, 166), (1000, 664)),
}


def child(case: str) -> None:
    import numpy as np
    import torch

    from ttsr_cli.nn import TTSR
    from ttsr_cli.pipeline import Upscaler

    start = time.perf_counter()
    (lw, lh), (rw, rh) = CASES[case]
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    lr = rng.integers(0, 256, (lh, lw, 3), dtype=np.uint8)
    ref = rng.integers(0, 256, (rh, rw, 3), dtype=np.uint8)
    upscaler = Upscaler(TTSR(), torch.device("cpu"))
    t0 = time.perf_counter()
    sr = upscaler.upscale(lr, [upscaler.encode_reference(ref)])
    upscale_s = time.perf_counter() - t0
    assert sr.shape == (lh * 4, lw * 4, 3)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "upscale_s": upscale_s,
                "process_s": time.perf_counter() - start,
                "peak_mib": peak_mib,
                "threads": torch.get_num_threads(),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print(
        f"paper configuration (n_feats 64, blocks 16+16+8+4), random weights, fp32, CPU "
        f"({platform.processor() or platform.machine()})\n"
    )
    print("| case | LR | Ref | search (LR x Ref positions) | upscale s | process s | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for case in args.case or sorted(CASES):
        (lw, lh), (rw, rh) = CASES[case]
        out = subprocess.run(
            [sys.executable, __file__, "--child", case], check=True, capture_output=True, text=True
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {case} | {lw}x{lh} | {rw}x{rh} | {lw * lh} x {rw * rh // 16} | "
            f"{r['upscale_s']:.1f} | {r['process_s']:.1f} | {r['peak_mib'] / 1024:.2f} GiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
