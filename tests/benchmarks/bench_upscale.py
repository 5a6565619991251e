"""Peak memory and wall time of a large tiled x4 upscale within a memory budget.

Paper configuration, random weights, fp32, CPU; each case in a fresh process so that its
peak RSS is its own:

    python tests/benchmarks/bench_upscale.py                  # case 12mp-small-ref
    python tests/benchmarks/bench_upscale.py --case 12mp      # the full case: hours on 2 cores

Each finished tile is logged on stderr (elapsed time, peak RSS so far).  Both cases upscale
a 1000x750 LR to 4000x3000 (12 megapixels) under a 6 GiB budget, so the main network is tiled
identically; they differ only in the reference.  With a 4000x3000 reference the exact
relevance search compares 750k x 750k positions, which takes hours on a small CPU, so the
default case uses a 500x376 reference to measure the tiling.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from harness import paper_upscaler, peak_rss_mib, random_images, run_child

BUDGET = 6 << 30
CASES = {
    "12mp-small-ref": ((1000, 750), (500, 376)),
    "12mp": ((1000, 750), (4000, 3000)),
}


def child(case: str) -> None:
    import torch

    start = time.perf_counter()
    (lw, lh), _ = CASES[case]
    lr, ref = random_images(*CASES[case])
    upscaler = paper_upscaler(memory_budget=BUDGET)
    t0 = time.perf_counter()
    upscaler.on_tile = lambda done, total: print(
        f"tile {done}/{total} at {time.perf_counter() - t0:.0f} s, "
        f"peak RSS {peak_rss_mib() / 1024:.2f} GiB",
        file=sys.stderr,
        flush=True,
    )
    result = upscaler.upscale_detailed(lr, [upscaler.encode_reference(ref)])
    upscale_s = time.perf_counter() - t0
    assert result.sr.shape == (lh * 4, lw * 4, 3)
    record = {"upscale_s": upscale_s, "process_s": time.perf_counter() - start}
    record.update(peak_mib=peak_rss_mib(), tiles=result.tiles, threads=torch.get_num_threads())
    print(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print("| case | LR | Ref | budget | tiles | upscale s | process s | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.case or ["12mp-small-ref"]:
        (lw, lh), (rw, rh) = CASES[case]
        r = run_child(__file__, case)
        print(
            f"| {case} | {lw}x{lh} | {rw}x{rh} | {BUDGET >> 30} GiB | {r['tiles']} | "
            f"{r['upscale_s']:.0f} | {r['process_s']:.0f} | {r['peak_mib'] / 1024:.2f} GiB |",
            flush=True,
        )


if __name__ == "__main__":
    main()
