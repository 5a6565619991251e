"""Peak memory and wall time of encoding one 4000x3000 (12-megapixel) reference.

Paper configuration (LTE widths 64/128/256), random weights, fp32, CPU; each case in a
fresh process so that its peak RSS is its own:

    python tests/benchmarks/bench_encode.py                   # case banded
    python tests/benchmarks/bench_encode.py --case whole      # as before: needs 11 GB
    python tests/benchmarks/bench_encode.py --case small-lr   # then a 40x30 LR: minutes

``banded`` is ``TTSRRunner.encode_reference`` under a 6 GiB memory budget: the LTE runs in
bands within the budget's working share and the values are stored in fp16.  ``whole`` is
the model's plain ``encode_reference`` (whole image at once, fp32 values), as the pipeline
did before.  ``small-lr`` adds what searching and transferring from this reference hold
whatever the LR's size (its features, the search's blocks): the exact search of a whole
1000x750 LR against it takes hours on a small CPU, but its tiles add only their own
network activations, which the budget bounds.
"""

from __future__ import annotations

import argparse
import json
import time

from harness import paper_upscaler, peak_rss_mib, random_images, run_child

BUDGET = 6 << 30
REF_SIZE = (4000, 3000)
CASES = ("banded", "whole", "small-lr")
SMALL_LR = (40, 30)


def encode(upscaler, ref, case: str):
    """The pipeline's encoding, or for ``whole`` the model's unbounded fp32 one."""
    import torch

    from ttsr_cli.pixels import reference_pair, to_tensor

    if case != "whole":
        return upscaler.encode_reference(ref)
    cpu = torch.device("cpu")
    ref_img, refsr_img = reference_pair(ref)
    with torch.inference_mode():
        return upscaler.model.encode_reference(to_tensor(ref_img, cpu), to_tensor(refsr_img, cpu))


def child(case: str) -> None:
    from ttsr_cli.run.ttsr import _feature_bytes

    lr, ref = random_images(SMALL_LR, REF_SIZE)
    upscaler = paper_upscaler(memory_budget=BUDGET)
    before = peak_rss_mib()
    start = time.perf_counter()
    features = encode(upscaler, ref, case)
    record = {"encode_s": time.perf_counter() - start, "before_mib": before, "upscale_s": 0}
    if case == "small-lr":
        start = time.perf_counter()
        upscaler.upscale(lr, [features])
        record["upscale_s"] = time.perf_counter() - start
    record.update(peak_mib=peak_rss_mib(), features_gib=_feature_bytes(features) / 2**30)
    record.update(values=str(features.values[0].dtype).removeprefix("torch."))
    print(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=CASES, action="append")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print("| case | Ref | values | features | RSS before | peak RSS | encode s | upscale s |")
    print("|---|---|---|---|---|---|---|---|")
    for case in args.case or ["banded"]:
        r = run_child(__file__, case)
        print(
            f"| {case} | {REF_SIZE[0]}x{REF_SIZE[1]} | {r['values']} | "
            f"{r['features_gib']:.2f} GiB | {r['before_mib'] / 1024:.2f} GiB | "
            f"{r['peak_mib'] / 1024:.2f} GiB | {r['encode_s']:.0f} | {r['upscale_s']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
