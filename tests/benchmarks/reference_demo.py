"""The reference-effect picture of a TTSR card: bicubic | self-reference | with the reference |
the reference crop, with each output's PSNR (TTSR protocol) in its label.

The pair is made from a scikit-image sample, as the TTSR authors' demo pair is made of a photo
and a sharper photo of the same scene: the input is the x4 Pillow-bicubic reduction of a crop,
the reference an overlapping crop of the same image, shifted and rescaled, at full resolution.

    python tests/benchmarks/reference_demo.py --out models/ttsr-reference.png
        [--weights FILE | --model NAME] [--image astronaut] [--box Y X] [--size 192]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image

from ttsr_cli import registry
from ttsr_cli.archs.ttsr.model import SCALE
from ttsr_cli.imageio import write_rgb
from ttsr_cli.metrics import score
from ttsr_cli.pictures import compare_sheet
from ttsr_cli.pixels import resize_bicubic
from ttsr_cli.run.ttsr import TTSRRunner
from ttsr_cli.weights import load as load_weights


def demo_pair(
    image: np.ndarray, box: tuple[int, int], size: int, shift: tuple[int, int], scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """(HR crop at ``box``, its reference: the crop ``shift`` pixels away, resized ``scale``x)."""
    y, x = box
    hr = image[y : y + size, x : x + size]
    ref = image[y + shift[0] : y + shift[0] + size, x + shift[1] : x + shift[1] + size]
    side = round(size * scale)
    return hr, np.asarray(Image.fromarray(ref).resize((side, side), Image.BICUBIC))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weights", help="Checkpoint file (default: the bundled model).")
    parser.add_argument("--model", help="A registry model name.")
    parser.add_argument("--image", default="astronaut", help="A scikit-image sample's name.")
    parser.add_argument("--box", type=int, nargs=2, default=(40, 150), metavar=("Y", "X"))
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--shift", type=int, nargs=2, default=(48, -40), metavar=("DY", "DX"))
    parser.add_argument("--scale", type=float, default=1.1)
    args = parser.parse_args()
    image = getattr(skimage.data, args.image)()[..., :3]
    hr, ref = demo_pair(image, tuple(args.box), args.size, tuple(args.shift), args.scale)
    weights = registry.resolve(args.model, args.weights)
    upscaler = TTSRRunner(load_weights(weights)[0], torch.device("cpu"), search="exact")
    lr = resize_bicubic(hr, args.size // SCALE, args.size // SCALE)
    bicubic = resize_bicubic(lr, args.size, args.size)
    own = upscaler.upscale_detailed(lr, []).sr
    borrowed = upscaler.upscale_detailed(lr, [upscaler.encode_reference(ref)]).sr
    panels = [
        (f"bicubic {score(bicubic, hr).psnr:.2f} dB", bicubic),
        (f"self-reference {score(own, hr).psnr:.2f} dB", own),
        (f"with the reference {score(borrowed, hr).psnr:.2f} dB", borrowed),
        ("the reference", ref[: args.size, : args.size]),
    ]
    for label, _ in panels:
        print(label)
    difference = np.abs(borrowed.astype(np.int16) - own.astype(np.int16)).mean()
    print(f"mean |with the reference - self-reference|: {difference:.2f} levels")
    write_rgb(args.out, compare_sheet(panels))


if __name__ == "__main__":
    main()
