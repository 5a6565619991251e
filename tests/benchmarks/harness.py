"""What the upscale benchmarks share: random inputs of a given size, a paper-configuration
upscaler, the shipped model, running each case in a fresh process so its peak RSS is its own,
and per-stage wall time and FLOP counts compared with the machine's matmul peak."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from ttsr_cli.archs.ttsr import TTSR

T = TypeVar("T")


def random_images(lr_size: tuple[int, int], ref_size: tuple[int, int], seed: int = 0):
    """Seeded uint8 LR and reference images of ``(width, height)`` sizes."""
    rng = np.random.default_rng(seed)
    (lw, lh), (rw, rh) = lr_size, ref_size
    return (
        rng.integers(0, 256, (lh, lw, 3), dtype=np.uint8),
        rng.integers(0, 256, (rh, rw, 3), dtype=np.uint8),
    )


def paper_model() -> TTSR:
    """The paper configuration with seeded random weights: what speed depends on, not quality."""
    import torch

    from ttsr_cli.archs.ttsr import TTSR

    torch.manual_seed(0)
    return TTSR()


def paper_upscaler(**options):
    """An ``TTSRRunner`` for the paper configuration with seeded random weights, on the CPU."""
    import torch

    from ttsr_cli.run.ttsr import TTSRRunner

    return TTSRRunner(paper_model(), torch.device("cpu"), **options)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str, case: str, *args: str, **popen) -> dict:
    """Run ``script --child case [args]`` in a fresh interpreter; its last stdout line is JSON."""
    out = subprocess.run(
        [sys.executable, script, "--child", case, *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        **popen,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def bundled_weights() -> Path | None:
    """The weights ``ttsr upscale`` uses by default, or None while none are bundled."""
    from ttsr_cli.errors import TTSRError
    from ttsr_cli.registry import resolve

    try:
        return resolve()
    except TTSRError:
        return None


def bundled_model() -> tuple[str, TTSR]:
    """The model ``ttsr upscale`` uses by default, and a title for tables.

    Until the registry's default is bundled, the ``lite`` training configuration with seeded
    random weights stands in for it: the architecture meant to ship, so its speed is
    representative even though its output is not.
    """
    import torch

    from ttsr_cli.archs.ttsr import TTSR
    from ttsr_cli.registry import load_registry
    from ttsr_cli.train.ttsr import CONFIGS
    from ttsr_cli.weights import load as load_weights

    path = bundled_weights()
    if path is None:
        torch.manual_seed(0)
        return "lite configuration (no bundled model yet), random weights", TTSR(CONFIGS["lite"])
    return f"bundled model `{load_registry().default}`", load_weights(path)[0]


def count_gflop(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """``fn(*args)`` and the GFLOP of its matrix products and convolutions.

    ``FlopCounterMode`` counts only those (2 per multiply-add); element-wise work is free to it.
    On meta tensors nothing is computed, so counting costs no more than tracing the ops.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn(*args)
    return out, counter.get_total_flops() / 1e9


class StageMeter:
    """Wall seconds and GFLOP per named stage, summed over every call (images, tiles).

    ``memo`` (shareable between meters) remembers counts by a caller's key, such as the
    input shapes when FLOPs depend on nothing else: tracing a network on meta tensors costs
    seconds of Python (bicubic upsampling is decomposed op by op), so it is done once per key.
    """

    def __init__(self, memo: dict[Any, float] | None = None) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.gflop: defaultdict[str, float] = defaultdict(float)
        self.memo = {} if memo is None else memo

    def time(self, stage: str, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` and add its wall time to ``stage`` (CPU: ops are synchronous)."""
        start = time.perf_counter()
        out = fn(*args)
        self.seconds[stage] += time.perf_counter() - start
        return out

    def count(self, stage: str, fn: Callable[..., Any], *args: Any, key: Any = None) -> float:
        """Add the GFLOP of ``fn(*args)`` (run again, untimed) to ``stage``; with a ``key``,
        reuse the count of an earlier call with the same key."""
        if key is None or key not in self.memo:
            gflop = count_gflop(fn, *args)[1]
            if key is None:
                self.gflop[stage] += gflop
                return gflop
            self.memo[key] = gflop
        self.gflop[stage] += self.memo[key]
        return self.memo[key]


def matmul_peak_gflops(size: int = 4096, repeats: int = 3) -> float:
    """Best fp32 ``torch.mm`` rate of two ``size`` x ``size`` matrices, in GFLOP/s: the
    ceiling against which every stage's achieved rate is compared (one warm-up first)."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def to_meta(value: T) -> T:
    """A tensor's shape-only copy (other values unchanged), for counting FLOPs for free.
    Floating tensors become fp32: FLOPs do not depend on the dtype, and a meta model's fp32
    weights meet bf16 activations without autocast, which does not reach meta tensors."""
    import torch

    if not isinstance(value, torch.Tensor):
        return value
    dtype = torch.float32 if value.is_floating_point() else value.dtype
    return value.to("meta", dtype)  # type: ignore[return-value]
