"""CSNLN training step: time and peak memory of one forward and backward on a batch of LR
patches, the training path against plain autograd through the inference path.

    python tests/benchmarks/bench_csnln_train.py [--config lite] [--batch 4] [--patch 48]
        [--steps 3] [--device cpu|cuda]

``ours`` is what ``ttsr train --arch csnln`` runs: each image's cross-scale attention in one
piece, its diagonal shift-sum an autograd function that is its own adjoint, the piece
checkpointed.  ``autograd`` is the baseline: the same network with the attention run as the
inference path runs it (one block of query rows through the row passes' in-place slice sums),
differentiated by autograd as it stands.  Each runs in a fresh process, so its peak memory is
its own: peak RSS (VmHWM) on the CPU, ``max_memory_allocated`` on CUDA.  The batch is crops
of scikit-image's ``astronaut``; both processes use the same seed, so their losses and
gradient norms must agree (printed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from harness import run_child

IMPLS = ("ours", "autograd")


def _inference_path(self, e, q, r):  # type: ignore[no-untyped-def]
    """The baseline's attention: the streamed code, one block of all rows, under autograd."""

    from ttsr_cli.archs.csnln import attention

    maps = attention._CrossScaleMaps(e, q, r, self.scale, self.escape_NaN)
    out = e.new_empty(e.shape[0], e.shape[1] * self.scale, e.shape[2] * self.scale)
    attention._cross_scale_image(maps, out, maps.height)
    return out


def batch(count: int, side: int, scale: int):  # type: ignore[no-untyped-def]
    """``count`` LR crops of ``side`` pixels from astronaut, bicubic-reduced by ``scale``."""
    import numpy as np
    import skimage.data
    import torch
    import torch.nn.functional as F

    hr = torch.from_numpy(np.ascontiguousarray(skimage.data.astronaut())).permute(2, 0, 1)
    hr = hr.float()[None] / 255
    rng = np.random.default_rng(0)
    hr_side = side * scale
    crops = []
    for _ in range(count):
        y, x = rng.integers(0, 512 - hr_side, size=2)
        crops.append(hr[:, :, y : y + hr_side, x : x + hr_side])
    hr = torch.cat(crops)
    return F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True), hr


def child(impl: str, args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F

    from ttsr_cli.archs.csnln.attention import CrossScaleAttention
    from ttsr_cli.archs.csnln.load import FAMILY
    from ttsr_cli.train.csnln import CONFIGS

    if impl == "autograd":
        CrossScaleAttention._whole = _inference_path  # type: ignore[method-assign]
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = FAMILY.create({**CONFIGS[args.config], "scale": 4})[0].to(device)
    lr, hr = (t.to(device) for t in batch(args.batch, args.patch, 4))
    times, loss = [], 0.0
    for _ in range(args.steps + 1):  # the first is a warm-up
        model.zero_grad()
        start = time.perf_counter()
        loss_t = F.l1_loss(model(lr), hr)
        loss_t.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        loss = loss_t.item()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    grad = torch.sqrt(sum(g.square().sum() for g in grads)).item()
    return {"s": min(times[1:]), "peak": _peak(device), "loss": loss, "grad": grad}


def _peak(device) -> int:  # type: ignore[no-untyped-def]
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="lite", choices=["tiny", "lite", "paper"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, default=48, help="LR patch side")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=1, metavar="IMPL")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args)))
        return
    passed = [f"--{k}={v}" for k, v in vars(args).items() if k != "child"]
    rows = {impl: run_child(__file__, impl, *passed) for impl in IMPLS}
    base = rows["autograd"]
    side = f"{args.patch}x{args.patch}"
    print(f"CSNLN x4 {args.config}, batch {args.batch} of {side} LR, {args.device}")
    print("| training step | s/step | peak GB | loss | gradient norm | time ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|")
    for impl, row in rows.items():
        print(
            f"| {impl} | {row['s']:.2f} | {row['peak'] / 2**30:.2f} | {row['loss']:.6f} | "
            f"{row['grad']:.6f} | {row['s'] / base['s']:.2f} | {row['peak'] / base['peak']:.2f} |"
        )


if __name__ == "__main__":
    main()
