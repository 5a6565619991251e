"""Training SFT-GAN on the user's photos and their class maps (``--arch sftgan``), and
fine-tuning its segmentation network on them (``--arch sftgan-seg``).

The authors published only test code; their training lived in BasicSR (``SFTGAN_ACD_Model``,
``train_sftgan.json``, since removed), and this follows it:

- **Data.**  Each photo (cropped to a multiple of 4) has a class map in ``--seg-maps``
  (``STEM.npy`` or ``STEM.png``, at the photo's size, any form ``ttsr upscale --seg-maps``
  reads).  The LR is the photo down-sampled x4 by MATLAB's bicubic (the authors' loader) and
  rounded to 8 bits, as every LR a user upscales is.  A sample is a random 96-pixel HR patch
  (24 LR), its priors, and horizontal and vertical flips (no rotation, as theirs).
- **Presets.**  ``rec``: the L1 loss alone, every weight at ``--lr``: the generator's
  pretraining.  ``gan``: the perceptual loss (L1 between VGG19 conv5_4 features, weight 1),
  the adversarial loss (weight 5e-3) and the ACD's class loss (weight 5e-3), no pixel loss;
  the SFT layers and the condition network learn at 5x ``--lr``; the discriminator
  (:class:`ttsr_cli.archs.sftgan.acd.ACD`) learns with Adam at ``--lr`` on its GAN loss and
  its class loss on real and generated patches.  A patch's class for the class loss is the
  class with the largest share of its priors (the authors' loader took the photo's folder
  name, one class per photo), and background patches are ignored as theirs were.
- **Where gan starts.**  From ``--init`` (the authors' file, or a ``rec`` run's
  ``model.safetensors``), or, without it, after :data:`PRETRAIN_EPOCHS` epochs of ``rec``
  in the same run.  The authors' run froze all but the SFT layers and the condition
  network for its first 20,000 steps, because its trunk came from an SRGAN without SFT; a
  generator pretrained here learned its SFT layers with its trunk, so nothing is frozen.
- **Order of the steps.**  The discriminator takes its step on a batch before the generator
  is scored against it (the authors scored first); the generator's adversarial gradient
  cannot be taken through weights the discriminator's step has already changed in place.

``sftgan-seg`` fine-tunes OutdoorSceneSeg (``--init``: the authors' weights; without it the
network starts from random weights, while the authors started from ImageNet) on the same
photos: its input is the LR's bicubic up-sampling made as at inference
(:func:`ttsr_cli.run.sftgan.segmentation_input`), its loss the cross-entropy of its
probabilities against the maps (soft, where the maps are probabilities).  BatchNorm stays
frozen at its running statistics, as segmentation networks are fine-tuned on small batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ttsr_cli.archs.sftgan.acd import ACD
from ttsr_cli.archs.sftgan.generator import SCALE, SFTGAN, SFTGANConfig
from ttsr_cli.archs.sftgan.load import FAMILY, load_segmentation
from ttsr_cli.archs.sftgan.segmentation import STRIDE, OutdoorSceneSeg
from ttsr_cli.errors import InputError, TTSRError
from ttsr_cli.imageio import probe_size, read_rgb
from ttsr_cli.imresize import imresize
from ttsr_cli.priors import PriorMaps, read_palette
from ttsr_cli.train.patches import PatchDataset, augment, chw_tensor
from ttsr_cli.train.recipe import Recipe, Terms
from ttsr_cli.weights import read_checkpoint, save_tensors

CONFIGS = {
    "tiny": SFTGANConfig(num_blocks=1, channels=8, cond_channels=8, cond_hidden=8),
    "lite": SFTGANConfig(num_blocks=6, channels=32, cond_channels=16, cond_hidden=64),
    "paper": SFTGANConfig(),
}
#: Loss weights: the pretraining, and the authors' GAN stage.
PRESETS = {
    "rec": {"rec": 1.0},
    "gan": {"per": 1.0, "adv": 5e-3, "cls": 5e-3},
}
#: Epochs of the L1 pretraining a gan run makes first when it has no ``--init``.
PRETRAIN_EPOCHS = 2
#: The SFT layers' and the condition network's learning rate over ``--lr`` (gan).
SFT_RATE = 5.0
#: The class the class loss ignores (background).
IGNORED_CLASS = 0


def checked(config: Mapping[str, Any]) -> dict[str, Any]:
    """An SFT-GAN configuration from a file, complete and valid (one line if not)."""
    try:
        return SFTGANConfig.from_dict(dict(config)).to_dict()
    except (TypeError, ValueError) as exc:
        raise TTSRError(f"invalid SFT-GAN configuration ({exc})") from None


class SegPatchDataset(PatchDataset):
    """Photos with their class maps: ``lr``, ``hr``, ``seg`` (the priors at HR size) and
    ``category`` per sample; with ``segmentation_input``, ``input`` (what OutdoorSceneSeg
    sees of the LR, at HR size) and ``seg`` instead.  Epochs and random choices as
    :class:`PatchDataset`'s."""

    def __init__(
        self,
        roots: Path | Sequence[Path],
        maps: PriorMaps,
        patch_size: int,
        seed: int,
        segmentation_input: bool = False,
    ) -> None:
        super().__init__(roots, patch_size, SCALE, seed)
        self.maps, self.segmentation_input = maps, segmentation_input
        self.map_paths = [maps.find(photo) for photo in self.inputs]  # all present, up front
        self._sizes = [self._checked_size(k) for k in range(len(self.inputs))]
        self._seg_inputs: dict[int, np.ndarray] = {}

    def _checked_size(self, index: int) -> tuple[int, int]:
        """The photo's (h, w), equal to its map's (read from both headers, before any step)."""
        photo, path = self.inputs[index], self.map_paths[index]
        width, height = probe_size(photo)
        found = self.maps.size(path)
        if found != (width, height):
            raise InputError(
                f"{path}: the class map is {found[0]}x{found[1]}, but its photo {photo.name} is "
                f"{width}x{height} (training maps are at the photo's size)"
            )
        if min(width, height) // SCALE * SCALE < self.patch:
            raise InputError(f"{photo}: smaller than the {self.patch} px training patch")
        return height, width

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        index, rng = self.draw(k)
        hr, lr = self._pair(index)
        side = self.patch // SCALE
        y = int(rng.integers(0, lr.shape[0] - side + 1)) * SCALE
        x = int(rng.integers(0, lr.shape[1] - side + 1)) * SCALE
        window = (slice(y, y + self.patch), slice(x, x + self.patch))
        flips = np.array([*rng.integers(0, 2, size=2), 0])  # no transpose (rotation)
        priors = augment(self._priors(index, hr.shape[:2]).transpose(1, 2, 0)[window], flips)
        seg = torch.from_numpy(priors.transpose(2, 0, 1).copy())
        if self.segmentation_input:
            view = augment(self._segmentation_input(index)[window], flips)
            return {"input": torch.from_numpy(view.transpose(2, 0, 1).copy()), "seg": seg}
        lr_window = (slice(y // SCALE, y // SCALE + side), slice(x // SCALE, x // SCALE + side))
        return {
            "lr": chw_tensor(augment(lr[lr_window], flips)),
            "hr": chw_tensor(augment(hr[window], flips)),
            "seg": seg,
            "category": torch.tensor(int(seg.sum((1, 2)).argmax())),
        }

    def _pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The photo cropped to a multiple of 4 and its LR (MATLAB bicubic, 8-bit), once."""
        if index not in self._pairs:
            photo = read_rgb(self.inputs[index])  # its size was checked up front
            h, w = (s // SCALE * SCALE for s in photo.shape[:2])
            hr = photo[:h, :w]
            lr = imresize(hr / 255.0, 1 / SCALE).clip(0, 1) * 255
            self._pairs[index] = (hr, np.round(lr).astype(np.uint8))
        return self._pairs[index]

    def _priors(self, index: int, size: tuple[int, int]) -> np.ndarray:
        """The photo's class map, read each time (a folder's maps need not fit in memory),
        cropped as the photo is (its size was checked up front)."""
        priors = self.maps.load(self.map_paths[index])
        if priors.shape[1:] != self._sizes[index]:  # the file changed since
            raise InputError(f"{self.map_paths[index]}: the class map changed size")
        return priors[:, : size[0], : size[1]]

    def _segmentation_input(self, index: int) -> np.ndarray:
        from ttsr_cli.run.sftgan import segmentation_input

        if index not in self._seg_inputs:
            lr = self._pair(index)[1]
            self._seg_inputs[index] = segmentation_input(lr / 255.0, SCALE).astype(np.float32)
        return self._seg_inputs[index]


def class_loss(logits: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the ACD's class head over the patches that are not background (zero,
    not NaN, when a batch holds none)."""
    total = F.cross_entropy(logits, category, ignore_index=IGNORED_CLASS, reduction="sum")
    return total / (category != IGNORED_CLASS).sum().clamp_min(1)


class _RealAndFake(nn.Module):
    """The ACD on real and on generated patches in one call (two passes, so BatchNorm sees
    each kind alone, as the authors' two calls did), for DistributedDataParallel."""

    def __init__(self, acd: ACD) -> None:
        super().__init__()
        self.acd = acd

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (*self.acd(real), *self.acd(fake))


def _maps(opts: Any) -> PriorMaps:
    """``--seg-maps`` (required: training needs each photo's classes) and its palette."""
    if opts.seg_maps is None:
        raise TTSRError(
            f"--arch {opts.arch} trains on class maps: give --seg-maps DIR (STEM.npy or "
            "STEM.png for each photo, at its size)"
        )
    palette = read_palette(opts.seg_palette) if opts.seg_palette is not None else None
    return PriorMaps(opts.seg_maps, palette)


def _refuse_foreign_options(opts: Any) -> None:
    if opts.scale != SCALE:
        raise TTSRError(f"--scale {opts.scale}: SFT-GAN super-resolves x{SCALE} only")
    if opts.match_loss or opts.val is not None:
        raise TTSRError("--match-loss and --val are not supported for SFT-GAN")


class SFTGANRecipe(Recipe):
    """The generator (``--arch sftgan``, presets ``rec`` and ``gan``)."""

    arch = "sftgan"
    default_batch = 16
    default_patch = 96

    def __init__(self, opts: Any) -> None:
        super().__init__(opts)
        _refuse_foreign_options(opts)
        if opts.preset not in PRESETS:
            raise TTSRError(f"unknown preset '{opts.preset}' (rec or gan)")
        self.maps = _maps(opts)
        self.weights = PRESETS[opts.preset]
        self.initial: SFTGAN | None = None
        if opts.init is not None:
            from ttsr_cli.weights import load

            model, descriptor = load(opts.init, expect="sftgan")
            self.initial = model  # type: ignore[assignment]
            opts.config = descriptor.config
        self.vgg: nn.Module | None = None
        self.acd: ACD | None = None
        self.acd_net: nn.Module | None = None
        self.acd_optimizer: torch.optim.Optimizer | None = None
        self.pretrain_steps = 0

    def create(self) -> nn.Module:
        if self.initial is not None:
            return self.initial
        return FAMILY.create(self.opts.config)[0]

    def dataset(self) -> torch.utils.data.Dataset:
        return SegPatchDataset(self.opts.data, self.maps, self.opts.patch_size, self.opts.seed)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """One rate for ``rec``; ``gan`` gives the SFT layers and the condition network
        5x ``--lr`` (``lr_sft``), as the authors' fine-tuning did."""
        if self.opts.preset == "rec":
            return super().param_groups(model)
        sft, other = [], []
        for name, p in model.named_parameters():
            (sft if "SFT_" in name or name.startswith("CondNet.") else other).append(p)
        return [
            {"params": other, "lr": self.opts.lr, "name": "lr"},
            {"params": sft, "lr": SFT_RATE * self.opts.lr, "name": "lr_sft"},
        ]

    def attach(self, trainer: Any) -> None:
        """The VGG19 and the discriminator of the gan preset, and its pretraining length."""
        if self.opts.preset != "gan":
            return
        from ttsr_cli import vgg_weights
        from ttsr_cli.archs.vgg import CONV5_4

        if self.initial is None:
            per_step = self.opts.batch_size * trainer.dist.world
            self.pretrain_steps = PRETRAIN_EPOCHS * math.ceil(len(trainer.dataset) / per_step)
        layers = vgg_weights.vgg19_features(self.opts.vgg)
        self.vgg = vgg_weights.perceptual_network(layers, CONV5_4).to(trainer.device)
        try:
            acd = ACD(self.opts.patch_size, trainer.model.config.classes)
        except ValueError as exc:
            raise TTSRError(f"--patch-size {self.opts.patch_size}: {exc}") from None
        self.acd = acd.to(trainer.device)
        self.acd_optimizer = torch.optim.Adam(
            self.acd.parameters(), lr=self.opts.lr, betas=(0.9, 0.999), eps=1e-8
        )
        self.acd_net = trainer.distributed(_RealAndFake(self.acd))

    def terms(self, trainer: Any, batch: Mapping[str, torch.Tensor]) -> Terms:
        with trainer.autocast():
            sr = trainer.net(batch["lr"], batch["seg"])
        if self.acd is None or trainer.step < self.pretrain_steps:
            return {"rec": F.l1_loss(sr.float(), batch["hr"])}, {}, {"rec": 1.0}
        sr = sr.float()
        logged = self._discriminator_step(sr.detach(), batch["hr"], batch["category"])
        self.acd.requires_grad_(False)
        gan, cls = self.acd(sr)
        self.acd.requires_grad_(True)
        with trainer.autocast():
            per = F.l1_loss(self.vgg(sr), self.vgg(batch["hr"]).detach())
        terms = {
            "per": per.float(),
            "adv": F.binary_cross_entropy_with_logits(gan, torch.ones_like(gan)),
            "cls": class_loss(cls, batch["category"]),
        }
        return terms, logged, self.weights

    def _discriminator_step(
        self, fake: torch.Tensor, real: torch.Tensor, category: torch.Tensor
    ) -> dict[str, float]:
        """One Adam step of the ACD: real patches as real, generated as fake, each also
        classified.  Logs its loss and its mean probability of real on each kind."""
        self.acd_optimizer.zero_grad(set_to_none=True)
        real_gan, real_cls, fake_gan, fake_cls = self.acd_net(real, fake)
        loss = (
            F.binary_cross_entropy_with_logits(real_gan, torch.ones_like(real_gan))
            + F.binary_cross_entropy_with_logits(fake_gan, torch.zeros_like(fake_gan))
            + class_loss(real_cls, category)
            + class_loss(fake_cls, category)
        )
        loss.backward()
        self.acd_optimizer.step()
        return {
            "d_loss": float(loss.detach()),
            "d_real": float(torch.sigmoid(real_gan.detach()).mean()),
            "d_fake": float(torch.sigmoid(fake_gan.detach()).mean()),
        }

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"preset": self.opts.preset}
        if self.acd is not None:
            state["acd"] = self.acd.state_dict()
            state["acd_optimizer"] = self.acd_optimizer.state_dict()
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        if state.get("preset") != self.opts.preset:
            raise TTSRError(f"was trained with --preset {state.get('preset')}")
        if self.acd is not None:
            self.acd.load_state_dict(state["acd"])
            self.acd_optimizer.load_state_dict(state["acd_optimizer"])


class SegmentationRecipe(Recipe):
    """OutdoorSceneSeg fine-tuned on the photos' class maps (``--arch sftgan-seg``)."""

    arch = "sftgan-seg"
    default_batch = 4
    default_patch = 320

    def __init__(self, opts: Any) -> None:
        super().__init__(opts)
        _refuse_foreign_options(opts)
        if opts.preset != "rec":
            raise TTSRError("--preset is the generator's; the segmentation trains on its maps")
        if opts.patch_size is not None and opts.patch_size % STRIDE:
            raise TTSRError(f"--patch-size {opts.patch_size}: a multiple of {STRIDE} here")
        self.maps = _maps(opts)
        self.initial: OutdoorSceneSeg | None = None
        if opts.init is not None:
            state, _ = read_checkpoint(opts.init)
            try:
                self.initial = load_segmentation(state)
            except TTSRError as exc:
                raise TTSRError(f"{opts.init}: {exc}") from None

    def create(self) -> nn.Module:
        model = self.initial if self.initial is not None else OutdoorSceneSeg()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.requires_grad_(False)
        return model

    def dataset(self) -> torch.utils.data.Dataset:
        opts = self.opts
        return SegPatchDataset(opts.data, self.maps, opts.patch_size, opts.seed, True)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        trained = [p for p in model.parameters() if p.requires_grad]
        return [{"params": trained, "lr": self.opts.lr, "name": "lr"}]

    def terms(self, trainer: Any, batch: Mapping[str, torch.Tensor]) -> Terms:
        """Cross-entropy of the probabilities against the maps, BatchNorm at its running
        statistics (the loop has just put the model in training mode)."""
        for module in trainer.model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        with trainer.autocast():
            probs = trainer.net(batch["input"])
        log_probs = probs.float().clamp_min(1e-12).log()
        loss = -(batch["seg"] * log_probs).sum(1).mean()
        return {"ce": loss}, {}, {"ce": 1.0}

    def save(self, model: nn.Module, path: Path, extra: Mapping[str, str]) -> None:
        """The segmentation network is no generator family's: its file says what it is."""
        save_tensors(model, path, {"arch": self.arch, **extra})
