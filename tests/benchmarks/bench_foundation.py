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
import subprocess
import time

from harness import paper_upscaler, peak_rss_mib, random_images, run_child

CASES = {
    "a": ((120, 80), (480, 320)),  # CUFED5 size
    "b": ((250, 166), (1000, 664)),
}


def child(case: str) -> None:
    import torch

    start = time.perf_counter()
    (lw, lh), _ = CASES[case]
    lr, ref = random_images(*CASES[case])
    upscaler = paper_upscaler()
    t0 = time.perf_counter()
    sr = upscaler.upscale(lr, [upscaler.encode_reference(ref)])
    upscale_s = time.perf_counter() - t0
    assert sr.shape == (lh * 4, lw * 4, 3)
    record = {"upscale_s": upscale_s, "process_s": time.perf_counter() - start}
    record.update(peak_mib=peak_rss_mib(), threads=torch.get_num_threads())
    print(json.dumps(record))


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
        r = run_child(__file__, case, stderr=subprocess.PIPE)
        print(
            f"| {case} | {lw}x{lh} | {rw}x{rh} | {lw * lh} x {rw * rh // 16} | "
            f"{r['upscale_s']:.1f} | {r['process_s']:.1f} | {r['peak_mib'] / 1024:.2f} GiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
