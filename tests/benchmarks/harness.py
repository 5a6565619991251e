"""What the upscale benchmarks share: random inputs of a given size, a paper-configuration
upscaler, and running each case in a fresh process so its peak RSS is its own."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import numpy as np


def random_images(lr_size: tuple[int, int], ref_size: tuple[int, int]):
    """Seeded uint8 LR and reference images of ``(width, height)`` sizes."""
    rng = np.random.default_rng(0)
    (lw, lh), (rw, rh) = lr_size, ref_size
    return (
        rng.integers(0, 256, (lh, lw, 3), dtype=np.uint8),
        rng.integers(0, 256, (rh, rw, 3), dtype=np.uint8),
    )


def paper_upscaler(**options):
    """An ``Upscaler`` for the paper configuration with seeded random weights, on the CPU."""
    import torch

    from ttsr_cli.nn import TTSR
    from ttsr_cli.pipeline import Upscaler

    torch.manual_seed(0)
    return Upscaler(TTSR(), torch.device("cpu"), **options)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str, case: str, **popen) -> dict:
    """Run ``script --child case`` in a fresh interpreter; its last stdout line is JSON."""
    out = subprocess.run(
        [sys.executable, script, "--child", case],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        **popen,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])
