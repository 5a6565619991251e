"""Dense CSNLN oracle: the official formulation, literally, on a :class:`CSNLN`'s own weights.

Full (positions x positions) score matrices, key patches normalised and correlated by a
convolution, the cross-scale paste as a transposed convolution of the ``3s x 3s`` patches, and
the tail applied to the concatenated bag of all HR features.  Tests compare the bounded-memory
network with it; benchmarks run it as the cost of the official formulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ttsr_cli.archs.csnln.attention import CrossScaleAttention, InScaleAttention
from ttsr_cli.archs.csnln.model import CSNLN
from ttsr_cli.archs.csnln.sem import MutualProjectedFusion, SEMCell


def dense_in_scale(attn: InScaleAttention, x: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T) v`` with the whole score matrix."""
    n, c, h, w = x.shape
    q = attn.conv_match1(x).flatten(2).transpose(1, 2)
    k = attn.conv_match2(x).flatten(2)
    v = attn.conv_assembly(x).flatten(2).transpose(1, 2)
    out = torch.matmul(F.softmax(torch.matmul(q, k), dim=2), v)
    return out.transpose(1, 2).reshape(n, c, h, w)


def same_patches(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """``[L, C, kernel, kernel]`` patches of ``x: [C, H, W]`` with TensorFlow 'same' padding
    (``ceil(side / stride)`` patches per side, the padding split with the odd pixel after)."""
    pads = []
    for side in (x.shape[2], x.shape[1]):
        total = max(0, (-(-side // stride) - 1) * stride + kernel - side)
        pads += [total // 2, total - total // 2]
    cols = F.unfold(F.pad(x[None], pads), kernel, stride=stride)[0]
    return cols.view(x.shape[0], kernel, kernel, -1).permute(3, 0, 1, 2)


def dense_cross_scale(attn: CrossScaleAttention, x: torch.Tensor) -> torch.Tensor:
    """Normalised 3x3 key patches of the downscaled map correlated with every query patch,
    softmax of 10x the scores over keys, transposed-convolution paste of the ``3s x 3s``
    patches at stride ``s``, divided by 6; one image at a time."""
    s = attn.scale
    embed = attn.conv_assembly(x)
    match = attn.conv_match_1(x)
    ref = attn.conv_match_2(F.interpolate(x, scale_factor=1 / s, mode="bilinear"))
    outs = []
    for e, q, r in zip(embed, match, ref, strict=True):
        raw = same_patches(e, 3 * s, s)
        keys = same_patches(r, 3, 1)
        norms = keys.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt()
        keys = keys / torch.maximum(norms, attn.escape_NaN)
        scores = F.conv2d(F.pad(q[None], (1, 1, 1, 1)), keys)
        probs = F.softmax(scores * 10, dim=1)
        outs.append(F.conv_transpose2d(probs, raw, stride=s, padding=s) / 6)
    return torch.cat(outs)


def dense_fusion(fusion: MutualProjectedFusion, x: torch.Tensor) -> torch.Tensor:
    down_map = fusion.upsample(dense_in_scale(fusion.down_attention, x))
    up_map = dense_cross_scale(fusion.up_attention, x)
    diff = up_map - down_map
    return down_map + (fusion.encoder.body(diff) + diff)


def dense_sem(sem: SEMCell, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x_up = dense_fusion(sem.multi_source_projection, x)
    estimate = x_up + sem.error_encode(x - sem.down_sample_1(x_up))
    if sem.scale != 4:
        return sem.post_conv(sem.down_sample_2(estimate)), estimate
    x_up = dense_fusion(sem.multi_source_projection_2, estimate)
    estimate = x_up + sem.error_encode_2(x - sem.down_sample_3(x_up))
    return sem.post_conv(sem.down_sample_4(estimate)), estimate


def dense_forward(model: CSNLN, x: torch.Tensor) -> torch.Tensor:
    """The whole network as the official code runs it, bag of HR features included."""
    feats = model.head(model.sub_mean(x))
    bag = []
    for _ in range(model.config.depth):
        feats, estimate = dense_sem(model.SEM, feats)
        bag.append(estimate)
    return model.add_mean(model.tail(torch.cat(bag, dim=1)))
