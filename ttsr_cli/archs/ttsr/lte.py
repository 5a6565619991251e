"""Learnable texture extractor (LTE, paper section 3.1).

The first twelve layers of VGG19 ``features`` split into three slices, preceded by a fixed
1x1 convolution that applies the ImageNet normalisation.  Module names keep VGG's layer
indices (``slice2.5``) so published TTSR checkpoints and torchvision VGG19 weights load as-is.

Every layer is local, so a large image can be encoded in horizontal bands that read a halo of
:data:`HALO` rows beyond their edges (:meth:`LTE.encode`, :meth:`LTE.encode_lv3`): the result
is the whole image's, while the activations (about :data:`BAND_TENSORS` full-resolution maps
of ``widths[0]`` channels, 3 GB each for a 12-megapixel image with VGG's 64) are only a band's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from ttsr_cli.archs.blocks import IMAGENET_MEAN, IMAGENET_STD, MeanShift

#: Input rows either side of a band that its lv3 rows depend on: a 3x3 conv at 1/4 reaches
#: 1 row there = 4 input rows, plus 1 at 1/2 before the second pool, plus 1 at full
#: resolution before the first = 10 rows; rounded up to a multiple of :data:`ALIGN`.
HALO = 12
#: Band edges fall on multiples of 4 so that both 2x2 max-pools pair the image's rows.
ALIGN = 4
#: Full-resolution ``widths[0]``-channel maps alive at once while a band is encoded: its lv1,
#: the next conv's output and its ReLU (3.1 measured with VGG's widths), rounded up.
BAND_TENSORS = 4
#: Resolution divisor of lv1, lv2 and lv3.
SCALES = (1, 2, 4)


def band_height(width: int, channels: int, budget_bytes: int, elem_size: int) -> int:
    """Input rows per band such that a band's activations, halo included, fit ``budget_bytes``
    (a multiple of :data:`ALIGN`, never less: a tight budget still gets an answer)."""
    row_bytes = width * channels * elem_size * BAND_TENSORS
    rows = budget_bytes // row_bytes - 2 * HALO
    return max(ALIGN, rows // ALIGN * ALIGN)


def bands(height: int, rows: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` rows of consecutive bands of ``rows`` rows covering ``height``."""
    for start in range(0, height, rows):
        yield start, min(height, start + rows)


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)


class LTE(nn.Module):
    """Texture features at three scales: lv1 (full res), lv2 (1/2) and lv3 (1/4).

    ``widths`` are the output channels of the three levels; (64, 128, 256) is VGG19's.
    Input is an image in [0, 1].
    """

    def __init__(self, widths: tuple[int, int, int] = (64, 128, 256)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.widths = tuple(widths)
        self.sub_mean = MeanShift(IMAGENET_MEAN, IMAGENET_STD)
        # Indices follow torchvision's vgg19().features so the state-dict keys match it.
        self.slice1 = nn.Sequential()
        self.slice1.add_module("0", _conv(3, w1))
        self.slice1.add_module("1", nn.ReLU())
        self.slice2 = nn.Sequential()
        self.slice2.add_module("2", _conv(w1, w1))
        self.slice2.add_module("3", nn.ReLU())
        self.slice2.add_module("4", nn.MaxPool2d(2))
        self.slice2.add_module("5", _conv(w1, w2))
        self.slice2.add_module("6", nn.ReLU())
        self.slice3 = nn.Sequential()
        self.slice3.add_module("7", _conv(w2, w2))
        self.slice3.add_module("8", nn.ReLU())
        self.slice3.add_module("9", nn.MaxPool2d(2))
        self.slice3.add_module("10", _conv(w2, w3))
        self.slice3.add_module("11", nn.ReLU())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lv1 = self.slice1(self.sub_mean(x))
        lv2 = self.slice2(lv1)
        lv3 = self.slice3(lv2)
        return lv1, lv2, lv3

    def lv3(self, x: torch.Tensor) -> torch.Tensor:
        """Only the coarsest level: what the query (LR) and key (Ref down-up) sides need."""
        return self.slice3(self.slice2(self.slice1(self.sub_mean(x))))

    def encode(
        self, x: torch.Tensor, budget_bytes: int | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` with activations bounded by ``budget_bytes`` (None: unbounded),
        written as ``dtype`` (None: as computed).  The same numbers either way."""
        lv1, lv2, lv3 = self._in_bands(self.forward, x, SCALES, budget_bytes, dtype)
        return lv1, lv2, lv3

    def encode_lv3(
        self, x: torch.Tensor, budget_bytes: int | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """:meth:`lv3` with activations bounded as by :meth:`encode`."""
        return self._in_bands(lambda band: (self.lv3(band),), x, SCALES[2:], budget_bytes, dtype)[0]

    def _in_bands(
        self,
        levels: Callable[[torch.Tensor], tuple[torch.Tensor, ...]],
        x: torch.Tensor,
        scales: tuple[int, ...],
        budget_bytes: int | None,
        dtype: torch.dtype | None,
    ) -> tuple[torch.Tensor, ...]:
        """``levels(x)`` band by band into preallocated outputs; whole when one band would do.

        Each band reads :data:`HALO` rows more on each side and keeps, at each level, only
        the rows of its own span: those saw exactly what they see in the whole image.
        """
        height, width = x.shape[-2:]
        rows = height
        if budget_bytes is not None:
            rows = band_height(width, self.widths[0], budget_bytes, x.element_size())
        if rows >= height:
            return tuple(f if dtype is None else f.to(dtype) for f in levels(x))
        outputs: list[torch.Tensor] = []
        for start, stop in bands(height, rows):
            top = max(0, start - HALO)
            features = levels(x[..., top : min(height, stop + HALO), :])
            # Allocated from the first band: under autocast only it tells the computed dtype.
            outputs = outputs or [
                _level_like(f, x, s, dtype) for f, s in zip(features, scales, strict=True)
            ]
            for out, feature, s in zip(outputs, features, scales, strict=True):
                # top, start and all but the last stop are multiples of 4: exact at every scale
                own = slice((start - top) // s, (stop - top) // s)
                out[..., start // s : stop // s, :] = feature[..., own, :]
        return tuple(outputs)


def _level_like(
    feature: torch.Tensor, image: torch.Tensor, scale: int, dtype: torch.dtype | None
) -> torch.Tensor:
    """An empty map for a whole level of ``image`` at 1/``scale``, of ``feature``'s kind, in
    channels-last memory (as references' values are kept for the transfer)."""
    shape = (*feature.shape[:-2], image.shape[-2] // scale, image.shape[-1] // scale)
    layout = torch.channels_last if feature.dim() == 4 else torch.contiguous_format
    return torch.empty(
        shape, dtype=dtype or feature.dtype, device=feature.device, memory_format=layout
    )
