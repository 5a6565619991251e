"""The main network (paper section 3.3): SFE, soft-attention fusion at 1x/2x/4x, CSFI.

Attribute names match the original implementation's state-dict keys (``MainNet.RB22.3.conv1``)
so published checkpoints load without conversion.

At 4x a single 64-channel feature map of a 1000x664 output is 170 MB, so the forward pass
avoids needless copies: convolutions over concatenated inputs are computed as sums of
convolutions over the parts (no concatenated copy), and ReLUs and residual additions work in
place on freshly made tensors, which autograd allows (none of those tensors is saved for the
backward pass).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ttsr_cli.archs.blocks import conv_cat


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1)


def conv1x1(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1)


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bicubic upsampling exactly as the original calls it (align_corners=False)."""
    return F.interpolate(x, scale_factor=factor, mode="bicubic")


class ResBlock(nn.Module):
    """conv3x3, ReLU, conv3x3, scaled by ``res_scale``, plus the input (EDSR style)."""

    def __init__(self, n_feats: int, res_scale: float) -> None:
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = conv3x3(n_feats, n_feats)
        self.conv2 = conv3x3(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu_(self.conv1(x)))
        if self.res_scale != 1:
            out.mul_(self.res_scale)
        return out.add_(x)


def res_blocks(count: int, n_feats: int, res_scale: float) -> nn.Sequential:
    # nn.Sequential numbers its children 0..n-1, the same keys as the original ModuleList.
    return nn.Sequential(*(ResBlock(n_feats, res_scale) for _ in range(count)))


class SFE(nn.Module):
    """Shallow feature extraction from the LR image."""

    def __init__(self, num_blocks: int, n_feats: int, res_scale: float) -> None:
        super().__init__()
        self.conv_head = conv3x3(3, n_feats)
        self.RBs = res_blocks(num_blocks, n_feats, res_scale)
        self.conv_tail = conv3x3(n_feats, n_feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv_head(x))
        return self.conv_tail(self.RBs(x)).add_(x)


class CSFI2(nn.Module):
    """Cross-scale feature integration between the 1x and 2x branches."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv12 = conv1x1(n_feats, n_feats)
        self.conv21 = conv3x3(n_feats, n_feats, stride=2)
        self.conv_merge1 = conv3x3(n_feats * 2, n_feats)
        self.conv_merge2 = conv3x3(n_feats * 2, n_feats)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x12 = F.relu_(self.conv12(upsample(x1, 2)))
        x21 = F.relu_(self.conv21(x2))
        y1 = F.relu_(conv_cat(self.conv_merge1, x1, x21))
        y2 = F.relu_(conv_cat(self.conv_merge2, x2, x12))
        return y1, y2


class CSFI3(nn.Module):
    """Cross-scale feature integration among the 1x, 2x and 4x branches."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv12 = conv1x1(n_feats, n_feats)
        self.conv13 = conv1x1(n_feats, n_feats)
        self.conv21 = conv3x3(n_feats, n_feats, stride=2)
        self.conv23 = conv1x1(n_feats, n_feats)
        self.conv31_1 = conv3x3(n_feats, n_feats, stride=2)
        self.conv31_2 = conv3x3(n_feats, n_feats, stride=2)
        self.conv32 = conv3x3(n_feats, n_feats, stride=2)
        self.conv_merge1 = conv3x3(n_feats * 3, n_feats)
        self.conv_merge2 = conv3x3(n_feats * 3, n_feats)
        self.conv_merge3 = conv3x3(n_feats * 3, n_feats)

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x21 = F.relu_(self.conv21(x2))
        x31 = F.relu_(self.conv31_2(F.relu_(self.conv31_1(x3))))
        y1 = F.relu_(conv_cat(self.conv_merge1, x1, x21, x31))
        del x21, x31
        x12 = F.relu_(self.conv12(upsample(x1, 2)))
        x32 = F.relu_(self.conv32(x3))
        y2 = F.relu_(conv_cat(self.conv_merge2, x2, x12, x32))
        del x12, x32
        x13 = F.relu_(self.conv13(upsample(x1, 4)))
        x23 = F.relu_(self.conv23(upsample(x2, 2)))
        y3 = F.relu_(conv_cat(self.conv_merge3, x3, x13, x23))
        return y1, y2, y3


class MergeTail(nn.Module):
    """Bring the 1x and 2x branches to 4x, merge with the 4x branch, project to RGB."""

    def __init__(self, n_feats: int) -> None:
        super().__init__()
        self.conv13 = conv1x1(n_feats, n_feats)
        self.conv23 = conv1x1(n_feats, n_feats)
        self.conv_merge = conv3x3(n_feats * 3, n_feats)
        self.conv_tail1 = conv3x3(n_feats, n_feats // 2)
        self.conv_tail2 = conv1x1(n_feats // 2, 3)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> torch.Tensor:
        x13 = F.relu_(self.conv13(upsample(x1, 4)))
        x23 = F.relu_(self.conv23(upsample(x2, 2)))
        x = F.relu_(conv_cat(self.conv_merge, x3, x13, x23))
        del x13, x23
        return self.conv_tail2(self.conv_tail1(x)).clamp(-1.0, 1.0)


class MainNet(nn.Module):
    """LR image + soft attention S + transferred textures T (lv3, lv2, lv1) -> SR in [-1, 1].

    At each scale the transferred texture is concatenated with the backbone features, fused
    by a 3x3 conv, weighted by the soft attention map and added back (paper eq. 7).
    """

    def __init__(
        self,
        num_res_blocks: Sequence[int],
        n_feats: int,
        res_scale: float,
        texture_widths: tuple[int, int, int],
    ) -> None:
        super().__init__()
        w1, w2, w3 = texture_widths
        b_sfe, b1, b2, b3 = num_res_blocks
        self.SFE = SFE(b_sfe, n_feats, res_scale)
        self.conv11_head = conv3x3(w3 + n_feats, n_feats)
        self.RB11 = res_blocks(b1, n_feats, res_scale)
        self.conv11_tail = conv3x3(n_feats, n_feats)
        self.conv12 = conv3x3(n_feats, n_feats * 4)
        self.ps12 = nn.PixelShuffle(2)
        self.conv22_head = conv3x3(w2 + n_feats, n_feats)
        self.ex12 = CSFI2(n_feats)
        self.RB21 = res_blocks(b2, n_feats, res_scale)
        self.RB22 = res_blocks(b2, n_feats, res_scale)
        self.conv21_tail = conv3x3(n_feats, n_feats)
        self.conv22_tail = conv3x3(n_feats, n_feats)
        self.conv23 = conv3x3(n_feats, n_feats * 4)
        self.ps23 = nn.PixelShuffle(2)
        self.conv33_head = conv3x3(w1 + n_feats, n_feats)
        self.ex123 = CSFI3(n_feats)
        self.RB31 = res_blocks(b3, n_feats, res_scale)
        self.RB32 = res_blocks(b3, n_feats, res_scale)
        self.RB33 = res_blocks(b3, n_feats, res_scale)
        self.conv31_tail = conv3x3(n_feats, n_feats)
        self.conv32_tail = conv3x3(n_feats, n_feats)
        self.conv33_tail = conv3x3(n_feats, n_feats)
        self.merge_tail = MergeTail(n_feats)

    @staticmethod
    def _fuse(head: nn.Conv2d, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Soft-attention fusion: x + conv(cat(x, T)) * S (the product is kept out of place:
        autograd needs the conv output to differentiate with respect to S)."""
        return (conv_cat(head, x, t) * s).add_(x)

    def forward(
        self,
        lr: torch.Tensor,
        S: torch.Tensor,
        T_lv3: torch.Tensor,
        T_lv2: torch.Tensor,
        T_lv1: torch.Tensor,
    ) -> torch.Tensor:
        return self.forward_4x(*self.forward_1x_2x(lr, S, T_lv3, T_lv2), S, T_lv1)

    def forward_1x_2x(
        self, lr: torch.Tensor, S: torch.Tensor, T_lv3: torch.Tensor, T_lv2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Stages 1 and 2: the 1x and 2x branches, ``([N, F, H, W], [N, F, 2H, 2W])``.

        Split from :meth:`forward_4x` because the two differ in what tiles them well: these
        stages see far (dozens of residual blocks at LR) but hold little memory, the 4x
        stage holds most of the memory but sees only a few LR pixels further.
        """
        # Stage 1 (LR resolution).
        x11 = self.SFE(lr)
        x11 = self._fuse(self.conv11_head, x11, T_lv3, S)
        x11 = self.conv11_tail(self.RB11(x11)).add_(x11)

        # Stage 2 (1x and 2x branches).
        x21 = x11
        x22 = F.relu_(self.ps12(self.conv12(x11)))
        x22 = self._fuse(self.conv22_head, x22, T_lv2, upsample(S, 2))
        r21, r22 = self.ex12(x21, x22)
        x21 = self.conv21_tail(self.RB21(r21)).add_(x21)
        x22 = self.conv22_tail(self.RB22(r22)).add_(x22)
        return x21, x22

    def forward_4x(
        self, x21: torch.Tensor, x22: torch.Tensor, S: torch.Tensor, T_lv1: torch.Tensor
    ) -> torch.Tensor:
        """Stage 3 (1x, 2x and 4x branches) and the merge tail: the SR image."""
        x31, x32 = x21, x22
        x33 = F.relu_(self.ps23(self.conv23(x22)))
        x33 = self._fuse(self.conv33_head, x33, T_lv1, upsample(S, 4))
        r31, r32, r33 = self.ex123(x31, x32, x33)
        x31 = self.conv31_tail(self.RB31(r31)).add_(x31)
        x32 = self.conv32_tail(self.RB32(r32)).add_(x32)
        x33 = self.conv33_tail(self.RB33(r33)).add_(x33)
        del r31, r32, r33

        return self.merge_tail(x31, x32, x33)
