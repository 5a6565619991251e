"""Training throughput: samples/s of ``Trainer.train_step`` for a configuration, plain
(contiguous fp32) against the optimised paths (channels_last, bf16 autocast).

    python tests/benchmarks/bench_train.py                      # paper, batch 9, 160 px
    python tests/benchmarks/bench_train.py --config lite --steps 5

The batch is real image data (scikit-image samples through the photo-folder pair synthesis),
so the step is exactly what ``ttsr train`` runs, minus data loading.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ttsr_cli.devices import TorchrunEnv
from ttsr_cli.train import Trainer, TrainOptions, load_config, recipe_for
from ttsr_cli.train.pairs import PairDataset
from ttsr_cli.train.ttsr import CONFIGS

VARIANTS = {
    "plain fp32": {"channels_last": False, "precision": "fp32"},
    "channels_last fp32": {"channels_last": True, "precision": "fp32"},
    "channels_last bf16": {"channels_last": True, "precision": "bf16"},
}


def photo_folder(root: Path) -> Path:
    import skimage.data

    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skimage.data, name)()).save(root / f"{name}.png")
    return root


def measure(config: str, batch: int, patch: int, steps: int, variant: dict) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        data = PairDataset(photo_folder(Path(tmp)), patch, seed=0)
        opts = TrainOptions(
            data=Path(tmp),
            out=Path(tmp) / "run",
            config=load_config(config),
            batch_size=batch,
            patch_size=patch,
            device="cpu",
            lte_init="random",
            **variant,
        )
        trainer = Trainer(opts, recipe_for(opts), TorchrunEnv(), torch.device("cpu"), data)
        samples = [data[k] for k in range(batch)]
        batch_tensors = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
        trainer.train_step(batch_tensors)  # warm-up: allocator, oneDNN primitive creation
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            trainer.train_step(batch_tensors)
            times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="paper", choices=sorted(CONFIGS))
    parser.add_argument("--batch-size", type=int, default=9)
    parser.add_argument("--patch-size", type=int, default=160)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{args.config} configuration, batch {args.batch_size}, {args.patch_size} px, "
        f"rec preset, CPU, {torch.get_num_threads()} threads, median of {args.steps} steps\n"
    )
    print("| variant | samples/s | vs plain |")
    print("|---|---|---|")
    plain = None
    for name, variant in VARIANTS.items():
        rate = measure(args.config, args.batch_size, args.patch_size, args.steps, variant)
        plain = plain or rate
        print(f"| {name} | {rate:.2f} | {rate / plain:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
