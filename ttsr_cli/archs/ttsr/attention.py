"""Relevance embedding, hard attention and soft attention (paper section 3.1).

The original computes the relevance between every 3x3 query patch (LR up-sampled, LTE lv3)
and every 3x3 key patch (Ref down-up, LTE lv3) as one dense matrix, and transfers textures by
unfolding the whole reference at every level.  Both grow with the product of image sizes
(14 GB for a 250x166 LR against a 1000x664 Ref).  Here:

* :func:`relevance_search` walks the (query x key) matrix in blocks sized from a memory budget
  and keeps only the running maximum and its arg-max per query position.  The maximum over a
  set does not depend on how the set is split, so the result is the dense one.  Each block
  is computed from pixel products and shifted sums instead of unfolded 3x3 patches: the same
  numbers with a ninth of the multiplications.
* :func:`transfer` performs the hard-attention gather and the overlapping fold directly on
  blocks of the reference features, using memory proportional to the output only.

Several references may be searched at once (``keys`` is a sequence): each query position
takes its best match across all of them, and indices run over their positions concatenated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PATCH = 3  # relevance is computed between 3x3 patches of lv3 features
_NEG_INF = float("-inf")


@dataclass
class Correspondence:
    """Result of the relevance search for a batch of LR images.

    ``index[n, i]``: hard attention, the best key position for query position ``i`` (row-major
    over the LR lv3 grid), counted over all references' positions concatenated.
    ``score``: soft attention S, the relevance of that best match, shaped ``[N, 1, H, W]``.
    """

    index: torch.Tensor
    score: torch.Tensor


@dataclass(frozen=True)
class ChunkPlan:
    """How many query and key positions (halo included) one block of the search covers."""

    query: int
    key: int


#: Largest working set of one block, whatever the budget: bigger blocks gain nothing in the
#: matrix products, and each fresh allocation of hundreds of MB costs page faults (at a
#: 1 GiB budget, 45% of an Urban100 image's time went to the kernel zeroing pages).
MAX_BLOCK_BYTES = 32 << 20

#: Live copies of a block's relevance values: the pixel products, their sum over the three
#: column shifts, and the patch relevances.
_BLOCK_COPIES = 3


def plan_chunks(n_query: int, n_key: int, budget_bytes: int, elem_size: int) -> ChunkPlan:
    """Largest block sizes whose working set fits ``budget_bytes``.

    A block holds ``_BLOCK_COPIES`` arrays of (query positions) x (key positions).  Larger
    blocks make better-shaped matrix products; the budget only ever halves the larger side.
    """
    q, k = max(1, n_query), max(1, n_key)
    while elem_size * _BLOCK_COPIES * q * k > budget_bytes and (q > 1 or k > 1):
        if k >= q:
            k = max(1, k // 2)
        else:
            q = max(1, q // 2)
    return ChunkPlan(query=q, key=k)


@dataclass(frozen=True)
class _Tile:
    """Rows ``y0:y1`` and columns ``x0:x1`` of a feature map's position grid."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


def _tiles(h: int, w: int, positions: int) -> Iterator[_Tile]:
    """Tiles of at most ``positions`` positions counting their one-pixel halo, as square as
    the map allows: the halo, recomputed by every tile, is then the smallest share of the
    work (row bands a few rows tall would double it), and small blocks stay in cache."""
    tile_w = min(w, max(1, math.isqrt(positions) - 2))
    tile_h = min(h, max(1, positions // (tile_w + 2) - 2))
    if tile_h == h:  # a short map: widen the tiles into the room left
        tile_w = min(w, max(1, positions // (tile_h + 2) - 2))
    for y0 in range(0, h, tile_h):
        for x0 in range(0, w, tile_w):
            yield _Tile(y0, min(h, y0 + tile_h), x0, min(w, x0 + tile_w))


def _patch_norms(feat: torch.Tensor) -> torch.Tensor:
    """L2 norm of every 3x3 zero-padded patch of ``[C, H, W]``, clamped as F.normalize does."""
    energy = feat.square().sum(dim=0, keepdim=True).unsqueeze(0)
    total = F.avg_pool2d(energy, PATCH, stride=1, padding=1, count_include_pad=True) * PATCH**2
    return total[0, 0].sqrt().clamp_min(_NORM_EPS)


_NORM_EPS = 1e-12  # F.normalize's default


def _block_relevance(query: torch.Tensor, qt: _Tile, key: torch.Tensor, kt: _Tile) -> torch.Tensor:
    """Un-normalised 3x3-patch products between the positions of two tiles.

    ``query`` and ``key`` are zero-padded ``[C, H+2, W+2]`` maps.  The product of two 3x3 patches
    is the sum, over the nine offsets d, of the pixel products at (i + d, j + d): one matrix
    product of pixel vectors (1/9 of the work of unfolded patches), then shifted sums along
    columns and rows.  Returns ``[qt positions, kt positions]``.
    """
    c = query.shape[0]
    q = query[:, qt.y0 : qt.y1 + 2, qt.x0 : qt.x1 + 2].reshape(c, -1)
    k = key[:, kt.y0 : kt.y1 + 2, kt.x0 : kt.x1 + 2].reshape(c, -1)
    qh, qw, kh, kw = qt.height, qt.width, kt.height, kt.width
    pixels = torch.mm(q.t(), k).view(qh + 2, qw + 2, kh + 2, kw + 2)
    return patch_sums(pixels, (0, 1), (2, 3)).view(qh * qw, kh * kw)


def patch_sums(
    pixels: torch.Tensor, query_axes: tuple[int, int], key_axes: tuple[int, int]
) -> torch.Tensor:
    """3x3-patch products from pixel products: the sum over the nine offsets d of the
    products at (query position + d, key position + d).

    ``pixels`` holds products between two padded grids, whose (row, column) axes are
    ``query_axes`` and ``key_axes``; each of those four axes comes out two shorter.  Columns
    are summed first, then rows: at most three such arrays are alive (``_BLOCK_COPIES``).
    """
    for q_axis, k_axis in zip(reversed(query_axes), reversed(key_axes), strict=True):
        nq, nk = pixels.shape[q_axis] - 2, pixels.shape[k_axis] - 2
        shifted = [pixels.narrow(q_axis, d, nq).narrow(k_axis, d, nk) for d in range(3)]
        summed = shifted[0] + shifted[1]
        summed += shifted[2]
        del shifted
        pixels = summed
    return pixels


#: Copies of the keys either search holds while it runs: the exact search a zero-padded copy,
#: the fast one its key table (the keys plus a border) and pooled levels (1/16 of it each).
KEY_COPIES = 1.2


def search_working_bytes(keys: Sequence[torch.Tensor], budget_bytes: int) -> int:
    """Most memory a search holds beyond its inputs and outputs: key copies, and blocks that
    never exceed :data:`MAX_BLOCK_BYTES` (whatever ``budget_bytes``), counted twice for the
    allocator's slack.  What a caller must leave free for the search, not its budget."""
    key_bytes = sum(k.numel() * k.element_size() for k in keys)
    return int(KEY_COPIES * key_bytes) + 2 * min(budget_bytes, MAX_BLOCK_BYTES)


def relevance_search(
    query: torch.Tensor, keys: Sequence[torch.Tensor], budget_bytes: int
) -> Correspondence:
    """Exact hard and soft attention in bounded memory.

    ``query``: LTE lv3 of the LR image up-sampled, ``[N, C, H, W]``.  ``keys``: LTE lv3 of each
    reference down-up, ``[N or 1, C, Hr, Wr]``.  Returns, for every query position, the arg-max
    and the maximum over all key positions of the cosine similarity of 3x3 patches (ties go to
    the lowest index, as ``torch.max`` does on the dense matrix).
    """
    n, _, h, w = query.shape
    n_key = sum((k.shape[-2] + 2) * (k.shape[-1] + 2) for k in keys)
    block_bytes = min(budget_bytes, MAX_BLOCK_BYTES)
    plan = plan_chunks((h + 2) * (w + 2), n_key, block_bytes, query.element_size())
    index = torch.empty(n, h, w, dtype=torch.long, device=query.device)
    score = torch.empty(n, h, w, dtype=query.dtype, device=query.device)
    for b in range(n):
        q_norm = _patch_norms(query[b])
        q_pad = F.pad(query[b], (1, 1, 1, 1))
        references = [k[b if k.shape[0] > 1 else 0] for k in keys]
        inv_norms = [1.0 / _patch_norms(k) for k in references]
        padded = [F.pad(k, (1, 1, 1, 1)) for k in references]
        for qt in _tiles(h, w, plan.query):
            rows = qt.height * qt.width
            best = torch.full((rows,), _NEG_INF, dtype=query.dtype, device=query.device)
            arg = torch.zeros(rows, dtype=torch.long, device=query.device)
            offset = 0
            for k_pad, k_inv in zip(padded, inv_norms, strict=True):
                kh, kw = k_inv.shape
                for kt in _tiles(kh, kw, plan.key):
                    rel = _block_relevance(q_pad, qt, k_pad, kt)
                    rel *= k_inv[kt.y0 : kt.y1, kt.x0 : kt.x1].reshape(1, -1)
                    value, local = rel.max(dim=1)
                    position = offset + (kt.y0 + local // kt.width) * kw + kt.x0 + local % kt.width
                    # Ties go to the lower position, as on the dense matrix, in any tile order.
                    better = (value > best) | ((value == best) & (position < arg))
                    best = torch.where(better, value, best)
                    arg = torch.where(better, position, arg)
                offset += kh * kw
            shape = (qt.height, qt.width)
            index[b, qt.y0 : qt.y1, qt.x0 : qt.x1] = arg.view(shape)
            score[b, qt.y0 : qt.y1, qt.x0 : qt.x1] = (
                best.view(shape) / q_norm[qt.y0 : qt.y1, qt.x0 : qt.x1]
            )
    return Correspondence(index=index.view(n, h * w), score=score.view(n, 1, h, w))


def transfer(
    values: Sequence[torch.Tensor],
    index: torch.Tensor,
    lr_size: tuple[int, int],
    scale: int,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Hard-attention texture transfer at one level (``scale`` 1, 2 or 4 for lv3, lv2, lv1).

    Equivalent to the original ``fold(gather(unfold(V, k=3s, pad=s, stride=s)), ...) / 9``:
    every LR position i copies the 3x3 neighbourhood of ``s x s`` blocks around its match
    ``index[i]`` in the reference onto the 3x3 neighbourhood of blocks around i, and
    overlapping copies are averaged over the nine patches.  Blocks are read straight out of
    the reference features, so memory is a few times the output, never a copy of the
    reference (3 GB at lv1 for a 12-megapixel one) nor the 9x-larger unfolded reference.

    ``values``: one ``[N or 1, C, Hr*s, Wr*s]`` tensor per reference, in any storage dtype;
    ``index`` as returned by :func:`relevance_search`.  Returns ``[N, C, H*s, W*s]`` in
    ``dtype`` (default: the values' own), to which gathered blocks are cast before summing.
    """
    h, w = lr_size
    n = index.shape[0]
    dtype = dtype or values[0].dtype
    outputs = []
    for b in range(n):
        grids = [_BlockGrid.of(v[b if v.shape[0] > 1 else 0], scale) for v in values]
        outputs.append(_fold_matches(grids, index[b], h, w, dtype))
    return torch.stack(outputs)


@dataclass(frozen=True)
class _BlockGrid:
    """One reference's ``[C, Hr*s, Wr*s]`` features seen as a grid of ``s x s`` blocks:
    ``blocks[y, :, x]`` is block (y, x) as ``[s, s, C]``.

    A view, not a copy, of channels-last features (as :meth:`TTSR.encode_reference` stores
    them): each block row is then ``s * C`` contiguous numbers, which gathers fast.  Other
    layouts are copied into it first.
    """

    blocks: torch.Tensor

    @classmethod
    def of(cls, value: torch.Tensor, s: int) -> _BlockGrid:
        c, hs, ws = value.shape
        return cls(value.permute(1, 2, 0).contiguous().view(hs // s, s, ws // s, s, c))

    @property
    def height(self) -> int:
        return self.blocks.shape[0]

    @property
    def width(self) -> int:
        return self.blocks.shape[2]

    def at(self, ny: torch.Tensor, nx: torch.Tensor) -> torch.Tensor:
        """Blocks (ny, nx), clamped into the grid, as ``[P, s, s, C]`` (advanced indices split
        by a slice put the indexed dimension first)."""
        return self.blocks[ny.clamp(0, self.height - 1), :, nx.clamp(0, self.width - 1)]


def _fold_matches(
    grids: Sequence[_BlockGrid], index: torch.Tensor, h: int, w: int, dtype: torch.dtype
) -> torch.Tensor:
    """Sum, for each of the nine neighbour offsets in turn, the block beside each match onto
    the block beside its LR position (zero where the neighbour is outside its reference).
    Returns ``[C, h*s, w*s]`` in channels-last memory, as the main network's convolutions
    like it."""
    sizes = [g.height * g.width for g in grids]
    offsets = torch.tensor([0, *sizes[:-1]], device=index.device).cumsum(0)
    widths = torch.tensor([g.width for g in grids], device=index.device)
    ref, jy, jx = locate(index, offsets, widths)
    ref_w = widths[ref]
    ref_h = torch.tensor([g.height for g in grids], device=index.device)[ref]
    s, c = grids[0].blocks.shape[1], grids[0].blocks.shape[4]
    out = torch.zeros(h + 2, w + 2, s, s, c, dtype=dtype, device=index.device)
    for ay in (-1, 0, 1):
        for ax in (-1, 0, 1):
            ny, nx = jy + ay, jx + ax
            inside = (ny >= 0) & (ny < ref_h) & (nx >= 0) & (nx < ref_w)
            gathered = _gather_blocks(grids, ref, ny, nx, inside, dtype)
            out[1 + ay : 1 + ay + h, 1 + ax : 1 + ax + w] += gathered.view(h, w, s, s, c)
    out = out[1 : h + 1, 1 : w + 1].permute(0, 2, 1, 3, 4).reshape(h * s, w * s, c)
    return out.div_(PATCH * PATCH).permute(2, 0, 1)  # in place: one output-sized map fewer


def locate(
    index: torch.Tensor, offsets: torch.Tensor, widths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions counted over several row-major grids concatenated -> (grid, row, column).
    ``offsets``: each grid's first position; ``widths``: each grid's width."""
    ref = torch.searchsorted(offsets, index, right=True) - 1
    local = index - offsets[ref]
    width = widths[ref]
    return ref, local // width, local % width


def _gather_blocks(
    grids: Sequence[_BlockGrid],
    ref: torch.Tensor,
    ny: torch.Tensor,
    nx: torch.Tensor,
    inside: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Block (ny, nx) of reference ``ref`` per position as ``[P, s, s, C]`` in ``dtype``;
    zero where ``inside`` is false.

    Every position is gathered, clamped into its reference, and those outside are zeroed
    afterwards: with one reference that is a single gather, a third faster than gathering
    only the inside rows into a zeroed buffer."""
    if len(grids) == 1:
        gathered = grids[0].at(ny, nx).to(dtype)
    else:
        s, c = grids[0].blocks.shape[1], grids[0].blocks.shape[4]
        gathered = torch.empty(ref.shape[0], s, s, c, dtype=dtype, device=ref.device)
        for number, grid in enumerate(grids):
            rows = (ref == number).nonzero().squeeze(1)
            gathered[rows] = grid.at(ny[rows], nx[rows]).to(dtype)
    if not bool(inside.all()):
        gathered[~inside] = 0
    return gathered
