"""Would an SFT mode help TTSR?  The soft attention's confidence S as a spatial-feature-transform
prior, against the paper's fusion, each fine-tuned the same way from the bundled model.

TTSR fuses the transferred texture T into the backbone features x at each scale as
``x + conv(cat(x, T)) * S`` (paper eq. 7): the confidence only scales the texture.  The SFT
mode (issue 16, "beyond the paper") makes S a prior map the way SFT-GAN makes segmentation
probabilities one: ``x + conv(cat(x, T)) * (a(S) + 1) + b(S)``, where ``a`` and ``b`` are each
two 1x1 convs (1 -> 32 -> n_feats, LeakyReLU 0.1 between: SFT-GAN's layer) computing a scale
and a shift per channel from S.  It starts equal to the paper's fusion (``a(S) = S - 1`` and
``b = 0``), so any difference is what it learns.

Both arms start from the same weights and fine-tune on the same batches (``ttsr train``'s
synthesised pairs of BSD68 + Sun80, sample k of step s is the dataset's item 9 s + k), with the
same rates, loss (L1 plus the matching loss at 0.1) and seeds.  Each is then measured as
``bench_reference_effect.py`` measures: PSNR with itself, an unrelated and the true reference
on held-out Urban100 pairs, and the effect (true - unrelated) with its 95% interval.

    python tests/benchmarks/experiment_ttsr_sft.py [--steps 150] [--pairs 100]
        [--weights FILE] [--data DIR ...] [--urban DIR]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_match_ref import DEFAULT_DATA, retrieval_cases
from bench_reference_effect import measure_pairs, summary

from ttsr_cli import registry
from ttsr_cli.archs.ttsr.mainnet import MainNet, conv_cat
from ttsr_cli.run.ttsr import TTSRRunner
from ttsr_cli.train.losses import matching_loss, reconstruction_loss
from ttsr_cli.train.pairs import PairDataset
from ttsr_cli.weights import load as load_weights

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"
HEADS = ("conv11_head", "conv22_head", "conv33_head")
HIDDEN = 32
SLOPE = 0.1
BATCH, PATCH, MATCH = 9, 160, 0.1


class ConfidenceSFT(nn.Module):
    """``y * (a(S) + 1) + b(S)``: SFT-GAN's layer with S as its one-channel condition,
    initialised to the paper's ``y * S``."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.scale0, self.scale1 = nn.Conv2d(1, HIDDEN, 1), nn.Conv2d(HIDDEN, n_feats, 1)
        self.shift0, self.shift1 = nn.Conv2d(1, HIDDEN, 1), nn.Conv2d(HIDDEN, n_feats, 1)
        with torch.no_grad():  # hidden unit 0 passes S on; the rest start unused
            self.scale0.weight[0].fill_(1.0)
            self.scale0.bias[0] = 0.0
            self.scale1.weight.zero_()
            self.scale1.weight[:, 0].fill_(1.0)
            self.scale1.bias.fill_(-1.0)
            self.shift1.weight.zero_()
            self.shift1.bias.zero_()

    def forward(self, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        scale = self.scale1(F.leaky_relu(self.scale0(s), SLOPE))
        shift = self.shift1(F.leaky_relu(self.shift0(s), SLOPE))
        return y * (scale + 1) + shift


def install_sft(main: MainNet) -> None:
    """Route the three fusions of ``main`` through their own :class:`ConfidenceSFT`."""
    n_feats = main.conv11_tail.out_channels
    main.sft_fusion = nn.ModuleDict({name: ConfidenceSFT(n_feats) for name in HEADS})
    names = {id(getattr(main, name)): name for name in HEADS}

    def fuse(head: nn.Conv2d, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return main.sft_fusion[names[id(head)]](conv_cat(head, x, t), s).add_(x)

    main._fuse = fuse  # type: ignore[method-assign]  # the instance's, over the static one


def finetune(model: nn.Module, data: list[Path], args: argparse.Namespace) -> list[float]:
    """``args.steps`` Adam steps on the fixed batch sequence; the mean loss per 25 steps."""
    torch.manual_seed(args.seed)
    dataset = PairDataset(data, PATCH, args.seed)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=BATCH, sampler=range(args.steps * BATCH), num_workers=2
    )
    groups = [
        {"params": model.MainNet.parameters(), "lr": args.lr},
        {"params": model.LTE.parameters(), "lr": args.lr / 2},
    ]
    optimizer = torch.optim.Adam(groups)
    model.train()
    losses, window = [], []
    for batch in loader:
        out = model(batch["lr"], batch["lrsr"], batch["ref"], batch["refsr"])
        loss = reconstruction_loss(out.sr, batch["hr"]) + MATCH * matching_loss(
            model.LTE, batch["lrsr"]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(float(loss.detach()))
        if len(window) == 25:
            losses.append(statistics.fmean(window))
            window = []
    return losses


def evaluate(model: nn.Module, pairs: list) -> list[dict]:
    """``bench_reference_effect``'s rows for ``model`` (exact search, CPU)."""
    runner = TTSRRunner(model.eval(), torch.device("cpu"), search="exact")
    with torch.no_grad():
        return measure_pairs(runner, pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="Start from this file (default: the bundled model).")
    parser.add_argument(
        "--data", type=Path, nargs="+", default=[SHARED / "BSD68", SHARED / "Sun80"]
    )
    parser.add_argument("--urban", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=1e-4, help="main network; the LTE's is half")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    start = load_weights(registry.resolve(None, args.weights))[0]
    pairs = retrieval_cases(args.urban, limit=args.pairs)
    for arm in ("paper", "sft"):
        model = copy.deepcopy(start)
        if arm == "sft":
            install_sft(model.MainNet)
        began = time.perf_counter()
        losses = finetune(model, args.data, args)
        trained = time.perf_counter() - began
        rows = evaluate(model, pairs)
        print(f"\n## {arm}: {args.steps} steps in {trained:.0f} s; loss per 25 steps:")
        print(" ".join(f"{v:.4f}" for v in losses))
        print("\n".join(summary(rows)))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
