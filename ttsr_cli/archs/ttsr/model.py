"""The TTSR model: LTE -> relevance search (hard/soft attention) -> main network.

Its state dict has the original's keys (``LTE.*``, ``MainNet.*``), so the published
``TTSR.pt`` / ``TTSR-rec.pt`` load without conversion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ttsr_cli.archs.ttsr.attention import (
    MAX_BLOCK_BYTES,
    Correspondence,
    relevance_search,
    transfer,
)
from ttsr_cli.archs.ttsr.fast_search import KeyIndex, fast_relevance_search
from ttsr_cli.archs.ttsr.lte import LTE
from ttsr_cli.archs.ttsr.mainnet import MainNet

#: TTSR super-resolves x4: its LTE levels and main-network stages are 1x, 2x and 4x.
SCALE = 4


@dataclass(frozen=True)
class TTSRConfig:
    """Architecture hyper-parameters.  The defaults are the paper's (6.73 M parameters).

    ``global_skip`` (not in the paper) adds the bicubic-upsampled input to the network's
    output, so a small model learns only the residual detail: this lets CPU-sized models
    beat bicubic after hours instead of days of training.
    """

    n_feats: int = 64
    num_res_blocks: tuple[int, int, int, int] = (16, 16, 8, 4)
    res_scale: float = 1.0
    lte_widths: tuple[int, int, int] = (64, 128, 256)
    global_skip: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_res_blocks", tuple(int(b) for b in self.num_res_blocks))
        object.__setattr__(self, "lte_widths", tuple(int(c) for c in self.lte_widths))
        if len(self.num_res_blocks) != 4 or len(self.lte_widths) != 3:
            raise ValueError("num_res_blocks needs 4 stages and lte_widths 3 levels")
        if self.n_feats < 2 or self.n_feats % 2:
            raise ValueError(f"n_feats must be an even number >= 2, got {self.n_feats}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_feats": self.n_feats,
            "num_res_blocks": list(self.num_res_blocks),
            "res_scale": self.res_scale,
            "lte_widths": list(self.lte_widths),
            "global_skip": self.global_skip,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TTSRConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown configuration field(s): {', '.join(sorted(unknown))}")
        return cls(**data)


#: Relevance searches by name: ``exact`` is the paper's; ``fast`` approximates it in time
#: linear in the image size (see ``nn.fast_search``).
SEARCHES = {"exact": relevance_search, "fast": fast_relevance_search}


@dataclass
class ReferenceFeatures:
    """What the network needs from one reference; computed once, reusable across LR images.

    ``key``: LTE lv3 of Ref down-up (matched against the LR).  ``values``: LTE
    ``(lv1, lv2, lv3)`` of the Ref itself (the textures that are transferred), possibly
    stored in a narrower dtype than the computation's: transfer casts what it gathers.
    """

    key: torch.Tensor
    values: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class Coarse:
    """What stages 1 and 2 hand to the 4x stage, at LR resolution H x W: the 1x and 2x
    branches ``x1`` ``[N, F, H, W]`` and ``x2`` ``[N, F, 2H, 2W]``, soft attention ``S``
    ``[N, 1, H, W]`` and hard attention ``index`` ``[N, H, W]``.  A tile of the 4x stage
    needs only the same crop of each (:meth:`crop`)."""

    x1: torch.Tensor
    x2: torch.Tensor
    S: torch.Tensor
    index: torch.Tensor

    @classmethod
    def empty(cls, like: Coarse, height: int, width: int) -> Coarse:
        """Uninitialised maps for a ``height x width`` LR image, of the kind of ``like``'s."""

        def map_like(t: torch.Tensor, scale: int) -> torch.Tensor:
            layout = torch.channels_last if t.dim() == 4 else torch.contiguous_format
            shape = (*t.shape[:-2], height * scale, width * scale)
            return torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=layout)

        scales = (1, 2, 1, 1)  # x2 is at twice the LR resolution
        return cls(*(map_like(t, s) for t, s in zip(like._maps(), scales, strict=True)))

    def copy_(self, other: Coarse) -> None:
        """Overwrite every map with ``other``'s (same sizes): pasting a tile into a crop."""
        for into, value in zip(self._maps(), other._maps(), strict=True):
            into.copy_(value)

    def _maps(self) -> tuple[torch.Tensor, ...]:
        return self.x1, self.x2, self.S, self.index

    def crop(self, rows: slice, cols: slice) -> Coarse:
        """LR rows and columns ``rows``, ``cols`` of every map (views, not copies)."""
        up = (slice(rows.start * 2, rows.stop * 2), slice(cols.start * 2, cols.stop * 2))
        return Coarse(
            self.x1[..., rows, cols],
            self.x2[..., up[0], up[1]],
            self.S[..., rows, cols],
            self.index[..., rows, cols],
        )


@dataclass
class TTSROutput:
    """SR image in [-1, 1], soft attention S, transferred textures and the hard-attention index."""

    sr: torch.Tensor
    S: torch.Tensor
    T_lv3: torch.Tensor
    T_lv2: torch.Tensor
    T_lv1: torch.Tensor
    hard_index: torch.Tensor


class TTSR(nn.Module):
    """Texture Transformer Network for x4 super-resolution.

    All images are ``[N, 3, H, W]`` in [-1, 1]: ``lr``; ``lrsr`` = lr bicubic-up x4; ``ref`` with
    sides multiple of 4; ``refsr`` = ref bicubic down x4 then up x4.
    """

    def __init__(self, config: TTSRConfig | None = None) -> None:
        super().__init__()
        self.config = config or TTSRConfig()
        c = self.config
        self.MainNet = MainNet(c.num_res_blocks, c.n_feats, c.res_scale, c.lte_widths)
        self.LTE = LTE(c.lte_widths)

    def encode_reference(
        self,
        ref: torch.Tensor,
        refsr: torch.Tensor,
        budget_bytes: int | None = None,
        values_dtype: torch.dtype | None = None,
    ) -> ReferenceFeatures:
        """Key and values of one reference.  ``budget_bytes`` bounds the LTE's activations:
        a 12-megapixel reference is encoded in bands (same features) instead of needing
        several 3 GB activation maps at once.  ``values_dtype`` stores the values (only
        gathered from, never compared) in e.g. fp16 to halve them; the key keeps the
        computed dtype, so the search's matches do not change."""
        key = self.LTE.encode_lv3((refsr + 1) / 2, budget_bytes)
        values = self.LTE.encode((ref + 1) / 2, budget_bytes, values_dtype)
        # Channels-last values: transfer gathers whole rows of blocks from them.
        values = tuple(v.contiguous(memory_format=torch.channels_last) for v in values)
        return ReferenceFeatures(key=key, values=values)

    def upscale(
        self,
        lr: torch.Tensor,
        lrsr: torch.Tensor,
        references: Sequence[ReferenceFeatures],
        search_budget: int | None = None,
        search: str = "exact",
        query: torch.Tensor | None = None,
        index: KeyIndex | None = None,
    ) -> TTSROutput:
        """Super-resolve ``lr`` with textures from one or more encoded references.

        With several references every LR patch takes its best match across all of them.
        ``search_budget`` bounds the relevance search's working memory in bytes (default:
        blocks of at most ``MAX_BLOCK_BYTES``); it never changes the result.  ``search``
        names one of :data:`SEARCHES`.  ``query``: the LTE lv3 of ``lrsr`` when it is already
        at hand (an image that is its own reference has it among its reference's values).
        ``index``: the references' :class:`KeyIndex` for the fast search, kept by the caller.
        """
        match = self.attend(lrsr, references, search_budget, search, query, index)
        coarse, t_lv3, t_lv2 = self._stages_1x_2x(lr, references, match)
        sr, t_lv1 = self._stage_4x(coarse, lrsr, references)
        return TTSROutput(sr, match.score, t_lv3, t_lv2, t_lv1, match.index)

    def attend(
        self,
        lrsr: torch.Tensor,
        references: Sequence[ReferenceFeatures],
        search_budget: int | None = None,
        search: str = "exact",
        query: torch.Tensor | None = None,
        index: KeyIndex | None = None,
    ) -> Correspondence:
        """Relevance search: hard attention (index) and soft attention (score) per LR
        position, for the query ``query`` (default: the LTE lv3 of ``lrsr``)."""
        if not references:
            raise ValueError("at least one reference is needed")
        budget = search_budget or MAX_BLOCK_BYTES
        if query is None:
            query = self.LTE.lv3((lrsr + 1) / 2)
        keys = [r.key for r in references]
        if search == "fast":
            return fast_relevance_search(query, keys, budget, index)
        return SEARCHES[search](query, keys, budget)

    def upscale_coarse(
        self,
        lr: torch.Tensor,
        lrsr: torch.Tensor,
        references: Sequence[ReferenceFeatures],
        search_budget: int | None = None,
        search: str = "exact",
        index: KeyIndex | None = None,
    ) -> Coarse:
        """The first half of :meth:`upscale`: attention, lv3/lv2 textures, stages 1 and 2.
        ``search_budget`` also bounds the LTE pass over ``lrsr``, which runs in bands within
        it: at 4x resolution, with 64 channels for VGG's widths, it would otherwise hold more
        than the stages that follow."""
        query = self.LTE.encode_lv3((lrsr + 1) / 2, search_budget)
        match = self.attend(lrsr, references, search_budget, search, query, index)
        return self._stages_1x_2x(lr, references, match)[0]

    def upscale_fine(
        self, coarse: Coarse, lrsr: torch.Tensor, references: Sequence[ReferenceFeatures]
    ) -> torch.Tensor:
        """The second half of :meth:`upscale`: lv1 texture, stage 3 and the tail, from a
        :class:`Coarse` (possibly a crop of a larger one): the SR image."""
        return self._stage_4x(coarse, lrsr, references)[0]

    def _stages_1x_2x(
        self, lr: torch.Tensor, references: Sequence[ReferenceFeatures], match: Correspondence
    ) -> tuple[Coarse, torch.Tensor, torch.Tensor]:
        """lv3 and lv2 textures, then stages 1 and 2: their hand-over and the textures."""
        size = tuple(match.score.shape[-2:])
        t_lv3 = _transfer(references, 2, match.index, size, match.score.dtype)
        t_lv2 = _transfer(references, 1, match.index, size, match.score.dtype)
        x1, x2 = self.MainNet.forward_1x_2x(lr, match.score, t_lv3, t_lv2)
        return Coarse(x1, x2, match.score, match.index.view(-1, *size)), t_lv3, t_lv2

    def _stage_4x(
        self, coarse: Coarse, lrsr: torch.Tensor, references: Sequence[ReferenceFeatures]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """lv1 texture, stage 3, the tail and the global skip if configured: SR and T_lv1."""
        size = tuple(coarse.S.shape[-2:])
        index = coarse.index.reshape(coarse.index.shape[0], -1)
        t_lv1 = _transfer(references, 0, index, size, coarse.S.dtype)
        sr = self.MainNet.forward_4x(coarse.x1, coarse.x2, coarse.S, t_lv1)
        if self.config.global_skip:
            sr = (sr + lrsr).clamp(-1.0, 1.0)
        return sr, t_lv1

    def forward(
        self,
        lr: torch.Tensor,
        lrsr: torch.Tensor,
        ref: torch.Tensor,
        refsr: torch.Tensor,
        search_budget: int | None = None,
    ) -> TTSROutput:
        return self.upscale(lr, lrsr, [self.encode_reference(ref, refsr)], search_budget)


def _transfer(
    references: Sequence[ReferenceFeatures],
    level: int,
    index: torch.Tensor,
    size: tuple[int, int],
    dtype: torch.dtype,
) -> torch.Tensor:
    """Hard-attention texture transfer of the references' ``values[level]`` (0: lv1, 2: lv3)
    in ``dtype``."""
    scale = (4, 2, 1)[level]
    return transfer([r.values[level] for r in references], index, size, scale, dtype)
