"""The single-CNN baseline of RL-Restore's card (the paper's comparison): one plain CNN with
about the parameter count of the whole RL-Restore network, trained on the same data as its
agent and joint stages (Sun80 63x63 patches with the ``moderate`` mixed damage, L2 loss), and
scored on exactly the inputs ``ttsr evaluate --degrade LEVEL --seed N`` scores.

    python tests/benchmarks/restore_baseline.py train --data ../shared/datasets/Sun80 \\
        --out baseline.safetensors --seconds 400 --device cuda
    python tests/benchmarks/restore_baseline.py evaluate baseline.safetensors \\
        --data ../shared/datasets/BSD68 --seed 0

The network is VDSR's shape (3x3 convolutions, 64 channels, ReLU, a global residual) at 16
layers: 520,515 parameters, against RL-Restore's 523,931 (its 12 tools and the agent).
Training is time-boxed (``--seconds``) so that it fits a lent GPU's minutes; Adam at 1e-4,
halved for the last quarter of the time.  He initialisation, the last layer zeroed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ttsr_cli.data import folder_info, list_samples
from ttsr_cli.degrade import LEVELS
from ttsr_cli.devices import select_device
from ttsr_cli.evaluate import Benchmark, Damage, run
from ttsr_cli.pixels import to_image, to_tensor
from ttsr_cli.train.rlrestore import CleanPatches, MixedPatches

DEPTH, WIDTH = 16, 64


class PlainCNN(nn.Module):
    """``depth`` 3x3 convolutions with ReLU between them, added to the input."""

    def __init__(self, depth: int = DEPTH, width: int = WIDTH) -> None:
        super().__init__()
        sizes = [3] + [width] * (depth - 1) + [3]
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in itertools.pairwise(sizes)
        )
        # He initialisation as VDSR's: at PyTorch's default the signal fades through 16
        # layers and the network never leaves the identity.  It starts as the identity, as
        # fresh RL-Restore tools do (the last layer zeroed).
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.convs[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for conv in self.convs[:-1]:
            h = F.relu(conv(h))
        return x + self.convs[-1](h)


def train(args: argparse.Namespace) -> None:
    """Steps of ``--batch-size`` damaged patches until ``--seconds`` have passed."""
    device = select_device(args.device)
    torch.manual_seed(args.seed)
    model = PlainCNN().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = MixedPatches(CleanPatches(args.data), args.seed)
    batches = [range(k * args.batch_size, (k + 1) * args.batch_size) for k in range(10**6)]
    loader = torch.utils.data.DataLoader(data, batch_sampler=batches, num_workers=args.workers)
    start, step, halved = time.perf_counter(), 0, False
    for batch in loader:
        elapsed = time.perf_counter() - start
        if elapsed > args.seconds:
            break
        if not halved and elapsed > 0.75 * args.seconds:
            optimizer.param_groups[0]["lr"], halved = 5e-5, True
        damaged, clean = batch["input"].to(device), batch["target"].to(device)
        loss = F.mse_loss(model(damaged), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 500 == 0:
            record = {"step": step, "loss": float(loss.detach()), "seconds": round(elapsed)}
            print(json.dumps(record))
    meta = {"depth": str(DEPTH), "width": str(WIDTH), "steps": str(step)}
    meta["batch_size"], meta["seconds"] = str(args.batch_size), str(args.seconds)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out), metadata=meta)
    print(json.dumps({"saved": str(args.out), "steps": step}))


class BaselineRunner:
    """What :func:`ttsr_cli.evaluate.run` needs of a restoration runner: ``upscale``."""

    descriptor = SimpleNamespace(takes_reference=False, scale=1)

    def __init__(self, model: PlainCNN, device: torch.device) -> None:
        self.model, self.device = model, device

    @torch.no_grad()
    def upscale(self, image: np.ndarray) -> np.ndarray:
        x = to_tensor(image, self.device, signed=False)
        return to_image(self.model(x), 8, signed=False)


def evaluate(args: argparse.Namespace) -> None:
    """Mean RGB PSNR of the input and of the baseline per level, as ``ttsr evaluate``."""
    device = select_device(args.device)
    model = PlainCNN()
    model.load_state_dict(load_file(str(args.weights)))
    runner = BaselineRunner(model.eval().to(device), device)
    samples = list_samples(folder_info(args.data), args.data)
    for level in LEVELS:
        damage = Damage(level, args.seed)
        report = run(Benchmark(args.data.name, "rgb", samples, runner, 1, damage))  # type: ignore[arg-type]
        before, after = report.mean("bicubic_psnr"), report.mean("psnr")
        row = {"dataset": args.data.name, "level": level, "input": before, "baseline": after}
        print(json.dumps({**row, "gain": after - before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    fit = verbs.add_parser("train")
    fit.add_argument("--data", type=Path, required=True)
    fit.add_argument("--out", type=Path, required=True)
    fit.add_argument("--seconds", type=float, default=400.0)
    fit.add_argument("--batch-size", type=int, default=32)
    fit.add_argument("--workers", type=int, default=4)
    fit.add_argument("--device", default="auto")
    fit.add_argument("--seed", type=int, default=0)
    score = verbs.add_parser("evaluate")
    score.add_argument("weights", type=Path)
    score.add_argument("--data", type=Path, required=True)
    score.add_argument("--seed", type=int, default=0)
    score.add_argument("--device", default="auto")
    args = parser.parse_args()
    train(args) if args.verb == "train" else evaluate(args)


if __name__ == "__main__":
    main()
