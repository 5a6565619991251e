"""CSNLN: head, the weight-shared self-exemplar mining cell run ``depth`` times, tail, and the
fixed mean shifts (Mei et al., "Image Super-Resolution with Cross-Scale Non-Local Attention and
Exhaustive Self-Exemplars Mining", CVPR 2020).

The official tail convolves the concatenation of all ``depth`` HR features, which keeps
``depth`` full-size maps alive.  A convolution over a concatenation is the sum of the
convolutions of its parts with the matching weight slices, so each iteration's features are
folded into a 3-channel output as soon as they exist (same numbers up to float
re-association); at most one HR feature map is alive at a time.

The feature maps are kept channels-last.  On CPU, oneDNN convolutions of NCHW maps pass
through reordered copies (measured on a 128-channel map: one extra map for a 3x3 convolution,
two for the strided transposed ones, which were also twice as slow); channels-last maps need
none, and the attentions' token matrices are views of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ttsr_cli.archs.blocks import MeanShift
from ttsr_cli.archs.csnln.attention import conv_prelu
from ttsr_cli.archs.csnln.sem import PROJECTION, SEMCell

#: DIV2K channel means, subtracted at the input and added back at the output.
RGB_MEAN = (0.4488, 0.4371, 0.4040)


@dataclass(frozen=True)
class CSNLNConfig:
    """Network configuration; the defaults besides ``scale`` are the paper's.

    ``reduction``: the attention embeddings are ``n_feats // reduction`` wide (the official
    code fixes 64 of 128).  ``rgb_range``: the input range, baked into the mean shifts.
    """

    scale: int
    n_feats: int = 128
    depth: int = 12
    n_colors: int = 3
    rgb_range: float = 1.0
    reduction: int = 2

    def __post_init__(self) -> None:
        for name in ("scale", "n_feats", "depth", "n_colors", "reduction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"CSNLN {name} must be a positive integer, got {value!r}")
        if self.scale not in PROJECTION:
            raise ValueError(f"CSNLN scale must be 2, 3 or 4, got {self.scale}")
        if self.n_colors != len(RGB_MEAN):
            raise ValueError(f"CSNLN takes RGB (n_colors 3), got n_colors {self.n_colors}")
        if self.n_feats % self.reduction:
            raise ValueError(
                f"CSNLN n_feats {self.n_feats} is not divisible by reduction {self.reduction}"
            )
        if isinstance(self.rgb_range, bool) or not isinstance(self.rgb_range, (int, float)):
            raise ValueError(f"CSNLN rgb_range must be a number, got {self.rgb_range!r}")
        if not self.rgb_range > 0:
            raise ValueError(f"CSNLN rgb_range must be positive, got {self.rgb_range}")
        object.__setattr__(self, "rgb_range", float(self.rgb_range))

    @property
    def size_multiple(self) -> int:
        """LR sides must be multiples of the cross-scale attention's factor (2 at x2/x4)."""
        return PROJECTION[self.scale][1]

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as stored in safetensors metadata."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CSNLNConfig:
        """Inverse of :meth:`to_dict`; unknown fields are an error, not silently dropped."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown CSNLN config fields: {', '.join(unknown)}")
        return cls(**data)


class CSNLN(nn.Module):
    """The network, with the official checkpoints' attribute names (so they load unmapped)."""

    def __init__(self, config: CSNLNConfig) -> None:
        super().__init__()
        self.config = config
        c = config.n_feats
        self.sub_mean = MeanShift(RGB_MEAN, sign=-1, rgb_range=config.rgb_range)
        self.SEM = SEMCell(c, config.reduction, config.scale)
        self.add_mean = MeanShift(RGB_MEAN, sign=1, rgb_range=config.rgb_range)
        self.head = nn.Sequential(conv_prelu(config.n_colors, c, 3), conv_prelu(c, c, 3))
        self.tail = nn.Sequential(nn.Conv2d(c * config.depth, config.n_colors, 3, padding=1))

    def forward(self, x: torch.Tensor, chunk_bytes: int | None = None) -> torch.Tensor:
        """RGB in ``[0, rgb_range]``, ``[N, 3, H, W]`` with sides multiples of
        :attr:`CSNLNConfig.size_multiple`, to RGB ``scale`` times larger (no clamping, as the
        official).  ``chunk_bytes`` bounds each attention's working set (``None``: one piece)."""
        self._check_input(x)
        tail = self.tail[0]
        c = self.config.n_feats
        feats = self.head(self.sub_mean(x.contiguous(memory_format=torch.channels_last)))
        out = None
        for i in range(self.config.depth):
            feats, hr = self.SEM(feats, chunk_bytes)
            weight = tail.weight[:, i * c : (i + 1) * c]
            term = F.conv2d(hr, weight, tail.bias if out is None else None, padding=1)
            del hr
            out = term if out is None else out.add_(term)
        return self.add_mean(out).contiguous()

    def _check_input(self, x: torch.Tensor) -> None:
        """The official size rule: other sides fail inside the cross-scale attention (its
        patch grid and its downscaled map disagree), so they are refused up front."""
        if x.dim() != 4 or x.shape[1] != self.config.n_colors:
            raise ValueError(f"CSNLN takes [N, {self.config.n_colors}, H, W], got {list(x.shape)}")
        multiple = self.config.size_multiple
        h, w = x.shape[2:]
        if h % multiple or w % multiple:
            raise ValueError(
                f"CSNLN x{self.config.scale} needs LR height and width divisible by "
                f"{multiple}, got {h}x{w} (pad the input)"
            )
