"""Training TTSR as the paper does.

Presets: ``rec`` trains with the L1 reconstruction loss only (TTSR-rec); ``gan`` trains two
epochs with L1 only, then with reconstruction 1, perceptual 1e-2, transferal perceptual 1e-2
and adversarial 1e-3 (TTSR).  Adam (0.9, 0.999) with a separate, smaller learning rate for the
LTE; the critic uses Adam (0, 0.9) and takes two steps per generator step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ttsr_cli.archs.discriminator import Discriminator
from ttsr_cli.archs.ttsr import TTSR, TTSRConfig
from ttsr_cli.errors import TTSRError
from ttsr_cli.train.losses import (
    critic_loss,
    generator_adversarial_loss,
    matching_loss,
    perceptual_loss,
    reconstruction_loss,
    transferal_perceptual_loss,
)
from ttsr_cli.train.pairs import PairDataset
from ttsr_cli.train.recipe import Recipe, Terms

CONFIGS = {
    "tiny": TTSRConfig(n_feats=16, num_res_blocks=(1, 1, 1, 1), lte_widths=(16, 32, 64)),
    # CPU-trainable: narrow, few blocks, and a global bicubic skip (see TTSRConfig).
    "lite": TTSRConfig(
        n_feats=32, num_res_blocks=(4, 4, 2, 1), lte_widths=(16, 32, 64), global_skip=True
    ),
    "paper": TTSRConfig(),
}
#: Loss weights after the warm-up: reconstruction, perceptual, transferal, adversarial.
PRESETS = {
    "rec": {"rec": 1.0},
    "gan": {"rec": 1.0, "per": 1e-2, "tpl": 1e-2, "adv": 1e-3},
}
GAN_WARMUP_EPOCHS = 2
CRITIC_STEPS = 2
VGG_WIDTHS = (64, 128, 256)


def checked(config: Mapping[str, Any]) -> dict[str, Any]:
    """A TTSR configuration from a file, complete and valid (one line if not)."""
    try:
        return TTSRConfig.from_dict(dict(config)).to_dict()
    except (TypeError, ValueError) as exc:
        raise TTSRError(f"invalid TTSR configuration ({exc})") from None


class TTSRRecipe(Recipe):
    """The paper's TTSR training (``--arch ttsr``)."""

    arch = "ttsr"
    protocol = "ttsr"
    default_batch = 9
    default_patch = 160

    def __init__(self, opts: Any) -> None:
        super().__init__(opts)
        if opts.preset not in PRESETS:
            raise TTSRError(f"unknown preset '{opts.preset}' (rec or gan)")
        if opts.scale != 4:
            raise TTSRError(f"--scale {opts.scale}: TTSR super-resolves x4 only")
        self.weights = PRESETS[opts.preset]
        self.vgg: nn.Module | None = None
        self.critic: nn.Module | None = None
        self.critic_net: nn.Module | None = None
        self.critic_optimizer: torch.optim.Optimizer | None = None
        self.warmup_steps = 0
        self.initial: TTSR | None = None
        if opts.init is not None:
            from ttsr_cli.weights import load

            if opts.lte_init != "auto":
                raise TTSRError("--lte-init is for a new model: with --init the LTE is the file's")

            model, descriptor = load(opts.init, expect="ttsr")
            self.initial = model  # type: ignore[assignment]
            opts.config = descriptor.config

    def create(self) -> nn.Module:
        """A fresh model (its LTE from VGG19 when ``--lte-init`` says so), or ``--init``'s."""
        if self.initial is not None:
            model = self.initial
        else:
            try:
                model = TTSR(TTSRConfig.from_dict(dict(self.opts.config)))
            except (TypeError, ValueError) as exc:
                raise TTSRError(f"invalid TTSR configuration: {exc}") from None
        self._init_from_vgg(model)
        return model

    def dataset(self) -> torch.utils.data.Dataset:
        return PairDataset(self.opts.data, self.opts.patch_size, self.opts.seed)

    def _init_from_vgg(self, model: TTSR) -> None:
        """The LTE from ImageNet VGG19 (``--lte-init``; never over ``--init``'s) and VGG19
        for the perceptual loss."""
        from ttsr_cli import vgg_weights

        source: str | None = self.opts.lte_init  # None: the LTE stays as it is
        if self.initial is not None or source == "random":
            source = None
        elif source == "auto":
            source = "vgg19" if model.LTE.widths == VGG_WIDTHS else None
        if source is None and "per" not in self.weights:
            return
        layers = vgg_weights.vgg19_features(self.opts.vgg if source in (None, "vgg19") else source)
        if source is not None:
            vgg_weights.init_lte(model.LTE, layers)
        if "per" in self.weights:
            self.vgg = vgg_weights.perceptual_network(layers)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        lte = [p for p in model.LTE.parameters() if p.requires_grad]
        return [
            {"params": model.MainNet.parameters(), "lr": self.opts.lr, "name": "lr"},
            {"params": lte, "lr": self.opts.lr_lte, "name": "lr_lte"},
        ]

    def attach(self, trainer: Any) -> None:
        per_step = self.opts.batch_size * trainer.dist.world
        if self.opts.preset == "gan":
            self.warmup_steps = GAN_WARMUP_EPOCHS * math.ceil(len(trainer.dataset) / per_step)
        if self.vgg is not None:
            self.vgg = self.vgg.to(trainer.device)
        if "adv" not in self.weights:
            return
        self.critic = Discriminator(self.opts.patch_size).to(trainer.device)
        self.critic_optimizer = torch.optim.Adam(
            self.critic.parameters(), lr=self.opts.lr, betas=(0.0, 0.9), eps=1e-8
        )
        self.critic_net = trainer.distributed(self.critic)

    def terms(self, trainer: Any, batch: Mapping[str, torch.Tensor]) -> Terms:
        """The paper's loss terms; two critic steps first once adversarial training is on."""
        full = trainer.step >= self.warmup_steps
        weights = dict(self.weights if full else {"rec": 1.0})
        if self.opts.match_loss:
            weights["match"] = self.opts.match_loss
        model = trainer.model
        terms: dict[str, torch.Tensor] = {}
        with trainer.autocast():
            out = trainer.net(batch["lr"], batch["lrsr"], batch["ref"], batch["refsr"])
            terms["rec"] = reconstruction_loss(out.sr, batch["hr"])
            if "per" in weights:
                terms["per"] = perceptual_loss(self.vgg, out.sr, batch["hr"])
            if "tpl" in weights:
                terms["tpl"] = transferal_perceptual_loss(model.LTE, out)
            if "match" in weights:
                terms["match"] = matching_loss(model.LTE, batch["lrsr"])
        logged: dict[str, float] = {}
        if "adv" in weights:
            logged["critic"] = self._critic_steps(out.sr.float(), batch["hr"])
            self.critic.requires_grad_(False)
            terms["adv"] = generator_adversarial_loss(self.critic, out.sr.float())
            self.critic.requires_grad_(True)
        return terms, logged, weights

    def _critic_steps(self, fake: torch.Tensor, real: torch.Tensor) -> float:
        value = 0.0
        for _ in range(CRITIC_STEPS):
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss = critic_loss(self.critic_net, fake, real)
            loss.backward()
            self.critic_optimizer.step()
            value = float(loss.detach())
        return value

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"preset": self.opts.preset}
        if self.critic is not None:
            state["critic"] = self.critic.state_dict()
            state["critic_optimizer"] = self.critic_optimizer.state_dict()
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        if state.get("preset") != self.opts.preset:
            raise TTSRError(f"was trained with --preset {state.get('preset')}")
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])
