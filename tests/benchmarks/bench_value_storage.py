"""How much storing a reference's values in fp16 changes the x4 output (vs fp32 storage).

The fixture checkpoint (../shared/fixtures/ttsr-official, paper LTE widths, seeded random
weights) on real pairs: LR made by bicubic x1/4 from Urban100 crops, each with the next
Urban100 image as reference, and the astronaut with itself at 3/4 scale as reference.
Prints the PSNR between the two outputs before rounding and in 8 bits, and the largest
feature magnitude per level (fp16 stops at 65504):

    python tests/benchmarks/bench_value_storage.py
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ttsr_cli.archs.ttsr.model import ReferenceFeatures
from ttsr_cli.metrics import psnr_rgb
from ttsr_cli.pixels import resize_bicubic, to_image, to_tensor
from ttsr_cli.run.ttsr import TTSRRunner
from ttsr_cli.weights import load as load_weights

SHARED = Path(__file__).resolve().parents[3] / "shared"  # ../shared, as the tests use
OFFICIAL = SHARED / "fixtures" / "ttsr-official"
URBAN = SHARED / "datasets" / "Urban100"
CROP = (480, 360)  # HR crop (w, h): a 120x90 LR, searched exactly in seconds
CPU = torch.device("cpu")


def urban(number: int) -> np.ndarray:
    image = np.asarray(Image.open(URBAN / f"img_{number:03d}.png").convert("RGB"))
    return image[: CROP[1], : CROP[0]]


def pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, HR, reference)."""
    import skimage.data

    astronaut = skimage.data.astronaut()
    smaller = np.asarray(Image.fromarray(astronaut).resize((384, 384), Image.BICUBIC))
    found = [(f"urban {i:03d}, ref {i + 1:03d}", urban(i), urban(i + 1)) for i in (1, 3, 5, 7)]
    return [*found, ("astronaut, ref itself at 3/4", astronaut, smaller)]


def sr(model: torch.nn.Module, lr: np.ndarray, features: ReferenceFeatures) -> torch.Tensor:
    """The network's output in [-1, 1], before rounding to 8 bits."""
    h, w = lr.shape[:2]
    lrsr = resize_bicubic(lr, w * 4, h * 4)
    with torch.inference_mode():
        return model.upscale(to_tensor(lr, CPU), to_tensor(lrsr, CPU), [features]).sr


def psnr_float(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two [-1, 1] outputs in [0, 1] units."""
    mse = float((((a - b) / 2).double() ** 2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def main() -> None:
    model = load_weights(OFFICIAL / "state_dict.pt")[0]
    exact = TTSRRunner(model, CPU)
    compact = TTSRRunner(model, CPU, memory_budget=1)  # every reference is large: fp16 values
    print("| pair | LR | float PSNR dB | 8-bit PSNR dB | max 8-bit diff | max abs lv1/lv2/lv3 |")
    print("|---|---|---|---|---|---|")
    for name, hr, ref in pairs():
        h, w = hr.shape[0] // 4, hr.shape[1] // 4
        lr = resize_bicubic(hr[: h * 4, : w * 4], w, h)
        full, half = exact.encode_reference(ref), compact.encode_reference(ref)
        assert all(v.dtype == torch.float16 for v in half.values)
        a, b = sr(model, lr, full), sr(model, lr, half)
        a8, b8 = to_image(a).astype(np.float64), to_image(b).astype(np.float64)
        peaks = "/".join(f"{float(v.abs().max()):.1f}" for v in full.values)
        print(
            f"| {name} | {w}x{h} | {psnr_float(a, b):.1f} | {psnr_rgb(a8, b8):.1f} | "
            f"{int(np.abs(a8 - b8).max())} | {peaks} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
