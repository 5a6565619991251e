"""The paper's losses: reconstruction (L1), perceptual (VGG19 relu5_1, MSE), transferal
perceptual (LTE features of the output against the transferred textures T) and adversarial
(WGAN-GP with the original critic); and one of ours, a matching loss for an LTE trained from
scratch (:func:`matching_loss`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ttsr_cli.archs.ttsr.lte import LTE
from ttsr_cli.archs.ttsr.model import TTSROutput
from ttsr_cli.archs.vgg import VGG19Features

GRADIENT_PENALTY_WEIGHT = 10.0


def reconstruction_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    return F.l1_loss(sr, hr)


def perceptual_loss(vgg: VGG19Features, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """MSE between VGG19 relu5_1 features of the output and of the ground truth."""
    with torch.no_grad():
        target = vgg((hr + 1) / 2)
    return F.mse_loss(vgg((sr + 1) / 2), target)


def transferal_perceptual_loss(lte: LTE, out: TTSROutput) -> torch.Tensor:
    """MSE between the LTE features of the output and T at three levels, each weighted by
    sigmoid(S) up-sampled to its level, averaged (the original's ``use_S`` variant).

    The LTE is applied with detached weights, as the original does with its ``LTE_copy``: the
    loss trains the main network to produce the transferred texture, not the LTE to match it.
    """
    frozen = {k: v.detach() for k, v in lte.named_parameters()}
    buffers = dict(lte.named_buffers())
    feats = functional_call(lte, {**frozen, **buffers}, ((out.sr + 1) / 2,))
    s = out.S
    weights = (
        torch.sigmoid(F.interpolate(s, scale_factor=4, mode="bicubic")),
        torch.sigmoid(F.interpolate(s, scale_factor=2, mode="bicubic")),
        torch.sigmoid(s),
    )
    targets = (out.T_lv1, out.T_lv2, out.T_lv3)
    total = sum(F.mse_loss(f * w, t * w) for f, t, w in zip(feats, targets, weights, strict=True))
    return total / 3


#: Matching loss: temperature of the cosine logits, and LR-up positions scored per image.
MATCH_TEMPERATURE = 0.07
MATCH_QUERIES = 64


def matching_loss(lte: LTE, lrsr: torch.Tensor) -> torch.Tensor:
    """Contrastive loss that makes the relevance embedding discriminative (InfoNCE).

    The paper's LTE starts from ImageNet VGG, whose features already tell patches apart.  A
    randomly initialised one does not: its post-ReLU 3x3 patches all have cosine near 1, so
    soft attention is near 1 for true and unrelated references alike and the main network has
    no signal for when to trust the transferred texture.  Here each sampled 3x3 lv3 patch of
    a photometrically jittered copy of the LR-up must be closer (the relevance's cosine) to
    the same position of the LR-up than to every other position of every image in the batch.
    """
    x = (lrsr + 1) / 2
    n = x.shape[0]
    shape = (n, 3, 1, 1)
    gain = 1 + 0.1 * torch.randn(shape, device=x.device, dtype=x.dtype)
    bias = 0.05 * torch.randn(shape, device=x.device, dtype=x.dtype)
    noise = 0.01 * torch.randn(x.shape, device=x.device, dtype=x.dtype)
    jittered = (x * gain + bias + noise).clamp(0, 1)
    keys = _unit_patches(lte.lv3(x))  # [N, L, D]
    queries = _unit_patches(lte.lv3(jittered))
    length = keys.shape[1]
    picks = torch.randint(length, (n, min(MATCH_QUERIES, length)), device=x.device)
    chosen = torch.gather(queries, 1, picks.unsqueeze(-1).expand(-1, -1, queries.shape[-1]))
    logits = chosen.flatten(0, 1) @ keys.flatten(0, 1).t() / MATCH_TEMPERATURE
    targets = (picks + length * torch.arange(n, device=x.device).unsqueeze(1)).flatten()
    return F.cross_entropy(logits, targets)


def _unit_patches(feat: torch.Tensor) -> torch.Tensor:
    """Unit-length zero-padded 3x3 patches of ``[N, C, H, W]`` as ``[N, H*W, 9C]``, in fp32:
    the vectors whose dot products the relevance search takes."""
    return F.normalize(F.unfold(feat.float(), 3, padding=1), dim=1).transpose(1, 2)


def critic_loss(critic: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """WGAN-GP critic loss: E[D(fake)] - E[D(real)] + 10 * E[(|grad D(mix)| - 1)^2].

    Fake, real and their random mixture go through the critic in one call (it has no
    normalisation layers, so this equals three calls), which DistributedDataParallel needs.
    """
    fake = fake.detach()
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mix = (fake * (1 - eps) + real * eps).requires_grad_(True)
    d_fake, d_real, d_mix = critic(torch.cat((fake, real, mix))).split(real.shape[0])
    (grad,) = torch.autograd.grad(d_mix.sum(), mix, create_graph=True)
    penalty = (grad.flatten(1).norm(2, dim=1) - 1).square().mean()
    return d_fake.mean() - d_real.mean() + GRADIENT_PENALTY_WEIGHT * penalty


def generator_adversarial_loss(critic: nn.Module, sr: torch.Tensor) -> torch.Tensor:
    return -critic(sr).mean()
