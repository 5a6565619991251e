"""Fast approximate relevance search (``--search fast``): coarse-to-fine candidate matching.

The exact search (:func:`ttsr_cli.archs.ttsr.attention.relevance_search`) scores every LR patch
against every reference patch, so its cost grows with the product of the two sizes: a
12-megapixel output against a 12-megapixel reference is ~10^12 patch pairs.  Like MASA-SR's
coarse-to-fine matching, this search

1. average-pools both feature maps by :data:`FACTOR` and matches the pooled maps, recursively,
   until the reference has at most :data:`EXACT_KEYS` positions, where the exact search runs;
2. at each finer level gives every pooled query cell a few candidate reference windows: the
   window under its own coarse match and under the matches its eight neighbours imply for it
   (a neighbour matched at ``m`` suggests ``m`` minus the offset between them, as PatchMatch
   propagates), each widened by :data:`MARGIN` positions;
3. scores each query patch exactly (cosine of 3x3 patches, as the paper) against those
   candidates only and keeps the best;
4. optionally (:data:`PROPAGATION_PASSES`) repeats 2-3 with the windows placed on the
   neighbours' matches at this level, which mends matches the coarse level got slightly
   wrong.  Off by default: with the bundled model one pass changed PSNR by under 0.005 dB
   against exact on real photos, at 1.6x the search time (1000x664 photo pair, paper LTE,
   ``bench_fast_search.py``: 11.4x faster than exact with it, 18.8x without).

Work per query position is fixed (9 windows of ``(FACTOR + 2 MARGIN)^2`` positions), so the
cost grows linearly with the image and (at the coarsest level only) with the reference.  The
result is a true local optimum over the candidates; where it differs from the exact arg-max
the patch it picks scores almost as high, so the transferred texture is nearly the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ttsr_cli.archs.ttsr.attention import (
    MAX_BLOCK_BYTES,
    Correspondence,
    _patch_norms,
    locate,
    patch_sums,
    relevance_search,
)

FACTOR = 4
MARGIN = 1
#: Extra passes per level that re-place the windows on the neighbours' fine matches.
PROPAGATION_PASSES = 0
#: References with at most this many lv3 positions (64 x 64) are searched exactly.
EXACT_KEYS = 4096
#: ``--search auto`` stays exact up to this many multiply-adds in the search (a few seconds on
#: a laptop CPU), and goes fast beyond: there the exact search grows with the product of sizes.
AUTO_EXACT_MACS = 5e10
_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]


def choose_search(query_positions: int, key_positions: int, channels: int) -> str:
    """``exact`` or ``fast`` for ``--search auto``, from the exact search's cost."""
    return "exact" if query_positions * key_positions * channels <= AUTO_EXACT_MACS else "fast"


def fast_relevance_search(
    query: torch.Tensor,
    keys: Sequence[torch.Tensor],
    budget_bytes: int,
    index: KeyIndex | None = None,
) -> Correspondence:
    """Approximate hard and soft attention; same inputs and outputs as the exact search.
    ``index``: the keys' :class:`KeyIndex`, kept by the caller for reuse."""
    n, _, h, w = query.shape
    if sum(k.shape[-2] * k.shape[-1] for k in keys) <= EXACT_KEYS:
        return relevance_search(query, keys, budget_bytes)
    if index is None or not index.holds(keys):
        index = KeyIndex(keys)
    matches = torch.empty(n, h * w, dtype=torch.long, device=query.device)
    score = torch.empty(n, 1, h, w, dtype=query.dtype, device=query.device)
    for b in range(n):
        best, value = _search(query[b], index.levels(b), 0, budget_bytes)
        matches[b] = best.reshape(-1)
        score[b, 0] = value / _patch_norms(query[b])
    return Correspondence(index=matches, score=score)


def _search(
    query: torch.Tensor, levels: _KeyLevels, level: int, budget_bytes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best key position (over the keys of ``level`` concatenated) for each query position,
    ``[H, W]``, and its relevance un-normalised by the query patch norm."""
    keys = levels.keys(level)
    if sum(k.shape[-2] * k.shape[-1] for k in keys) <= EXACT_KEYS or min(query.shape[-2:]) < 2:
        match = relevance_search(query[None], [k[None] for k in keys], budget_bytes)
        h, w = query.shape[-2:]
        best = match.index.view(h, w)
        return best, match.score.view(h, w) * _patch_norms(query)
    coarse, _ = _search(_pool(query), levels, level + 1, budget_bytes)
    hc, wc = coarse.shape
    table = levels.table(level)
    windows = _windows(coarse, _Grids.of(levels.keys(level + 1)), hc, wc, step=1, scale=FACTOR)
    best, value = _refine(query, table, windows, budget_bytes)
    for _ in range(PROPAGATION_PASSES):
        windows = _windows(best, table.source, hc, wc, step=FACTOR, scale=1)
        again, again_value = _refine(query, table, windows, budget_bytes)
        better = again_value > value
        best, value = torch.where(better, again, best), torch.where(better, again_value, value)
    return best, value


class KeyIndex:
    """The keys average-pooled level by level, and each level's :class:`_KeyTable`, made
    once per set of keys: every tile of an image, and every image of a batch, searches the
    same references, and a 12-megapixel one's table takes seconds to build.  Whoever holds
    the references holds their index (and drops both together); a search given none, or
    one made from other keys, makes its own for that call."""

    def __init__(self, keys: Sequence[torch.Tensor]) -> None:
        self._keys = tuple(keys)
        self._levels: dict[int, _KeyLevels] = {}

    def holds(self, keys: Sequence[torch.Tensor]) -> bool:
        """Whether this index was made from exactly these key tensors."""
        return len(keys) == len(self._keys) and all(
            a is b for a, b in zip(keys, self._keys, strict=True)
        )

    def levels(self, b: int) -> _KeyLevels:
        """The levels of batch element ``b``."""
        if b not in self._levels:
            self._levels[b] = _KeyLevels([k[b if k.shape[0] > 1 else 0] for k in self._keys])
        return self._levels[b]


class _KeyLevels:
    """Pooled keys and key tables of one batch element, level 0 being the keys themselves."""

    def __init__(self, keys: list[torch.Tensor]) -> None:
        self._pooled: list[list[torch.Tensor]] = [keys]
        self._tables: dict[int, _KeyTable] = {}

    def keys(self, level: int) -> list[torch.Tensor]:
        while len(self._pooled) <= level:
            self._pooled.append([_pool(k) for k in self._pooled[-1]])
        return self._pooled[level]

    def table(self, level: int) -> _KeyTable:
        if level not in self._tables:
            self._tables[level] = _KeyTable(self.keys(level), FACTOR + 2 * MARGIN)
        return self._tables[level]


def _pool(feat: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(feat[None], FACTOR, ceil_mode=True)[0]


class _Grids:
    """Position bookkeeping for several grids searched as one concatenated list."""

    def __init__(self, sizes: Sequence[tuple[int, int]], device: torch.device) -> None:
        self.heights = torch.tensor([s[0] for s in sizes], device=device)
        self.widths = torch.tensor([s[1] for s in sizes], device=device)
        counts = self.heights * self.widths
        self.offsets = torch.cumsum(counts, 0) - counts
        self.total = int(counts.sum())

    @classmethod
    def of(cls, maps: Sequence[torch.Tensor]) -> _Grids:
        """The grids of feature maps ``[..., H, W]``."""
        return cls([(int(m.shape[-2]), int(m.shape[-1])) for m in maps], maps[0].device)

    def split(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Global position -> (reference, row, column)."""
        return locate(index, self.offsets, self.widths)

    def join(self, ref: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(reference, row, column), clamped into that reference -> global position."""
        y = torch.minimum(y.clamp_min(0), self.heights[ref] - 1)
        x = torch.minimum(x.clamp_min(0), self.widths[ref] - 1)
        return self.offsets[ref] + y * self.widths[ref] + x


def _neighbour_matches(
    best: torch.Tensor, hc: int, wc: int, step: int
) -> list[tuple[int, int, torch.Tensor]]:
    """For each of the nine offsets d, the match of the neighbouring cell's representative
    position (``best`` sampled every ``step`` positions, edges clamped) as ``[hc, wc]``."""
    h, w = best.shape
    ys = (torch.arange(hc, device=best.device) * step + step // 2).clamp_max(h - 1)
    xs = (torch.arange(wc, device=best.device) * step + step // 2).clamp_max(w - 1)
    rep = best[ys[:, None], xs[None, :]]
    out = []
    for dy, dx in _OFFSETS:
        rows = (torch.arange(hc, device=best.device) + dy).clamp(0, hc - 1)
        cols = (torch.arange(wc, device=best.device) + dx).clamp(0, wc - 1)
        out.append((dy, dx, rep[rows[:, None], cols[None, :]]))
    return out


def _windows(
    best: torch.Tensor, grids: _Grids, hc: int, wc: int, step: int, scale: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Search windows ``(reference, top, left)``, ``[hc, wc, 9]``, for the cells of
    ``FACTOR x FACTOR`` query positions: one per neighbour, placed where that neighbour's
    match implies this cell's match lies (PatchMatch propagation), with a margin.

    ``best`` holds matches on a grid whose positions are ``step`` query positions apart and
    ``scale`` reference positions large: the coarse level's (step 1, scale ``FACTOR``), or
    this level's own (step ``FACTOR``, scale 1) for a second pass.
    """
    refs, tops, lefts = [], [], []
    for dy, dx, match in _neighbour_matches(best, hc, wc, step):
        ref, my, mx = grids.split(match)
        # Cell centre in this level's reference positions, minus the neighbour's offset.
        cy = my * scale + scale // 2 - dy * FACTOR
        cx = mx * scale + scale // 2 - dx * FACTOR
        refs.append(ref)
        tops.append(cy - FACTOR // 2 - MARGIN)
        lefts.append(cx - FACTOR // 2 - MARGIN)
    return torch.stack(refs, -1), torch.stack(tops, -1), torch.stack(lefts, -1)


def _refine(
    query: torch.Tensor,
    table: _KeyTable,
    windows: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    budget_bytes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact 3x3-patch relevance of each query position against its cell's windows.

    Per cell, one matrix product of pixel vectors: the cell's ``(F+2)^2`` query pixels (halo
    included) against each window's ``(L+2)^2`` key pixels, then shifted sums over the nine
    patch offsets, as the exact search does, which needs a ninth of the multiplications and
    gathers of unfolded patches.  Where neighbours' matches agree, as they mostly do on
    structured content, several of a cell's windows are the same one: each distinct window is
    gathered and scored once (cells are grouped by how many distinct windows they have).
    """
    c, h, w = query.shape
    f, side = FACTOR, FACTOR + 2 * MARGIN
    ref, y0, x0 = table.place(*windows)
    ids = table.window_ids(ref, y0, x0)
    hc, wc, n_win = ref.shape
    q_pad = F.pad(query, (1, 1 + wc * f - w, 1, 1 + hc * f - h))
    elem = query.element_size()
    per_cell = n_win * (side + 2) ** 2 * (c + 3 * (f + 2) ** 2) * elem
    rows_per_chunk = max(1, min(budget_bytes, MAX_BLOCK_BYTES) // max(1, per_cell * wc))
    best = torch.empty(hc * f, wc * f, dtype=torch.long, device=query.device)
    value = torch.empty(hc * f, wc * f, dtype=query.dtype, device=query.device)
    for r0 in range(0, hc, rows_per_chunk):
        r1 = min(hc, r0 + rows_per_chunk)
        n = (r1 - r0) * wc
        q = F.unfold(q_pad[None, :, r0 * f : r1 * f + 2], f + 2, stride=f)
        q = q.view(c, (f + 2) ** 2, n).permute(2, 1, 0).contiguous()  # [cells, (F+2)^2, C]
        rr, yy, xx = (t[r0:r1].reshape(n, n_win) for t in (ref, y0, x0))
        slots, counts = _distinct_first(ids[r0:r1].reshape(n, n_win))
        chosen = torch.empty(n, f * f, dtype=torch.long, device=query.device)
        top = torch.empty(n, f * f, dtype=query.dtype, device=query.device)
        for u in counts.unique().tolist():
            cells = (counts == u).nonzero().squeeze(1)
            slot = slots[cells, :u]
            chosen[cells], top[cells] = _score_windows(
                q[cells], table, *(t[cells].gather(1, slot) for t in (rr, yy, xx))
            )
        block = (slice(r0 * f, r1 * f), slice(None))
        best[block] = _cells_to_map(table.original(chosen), r1 - r0, wc)
        value[block] = _cells_to_map(top, r1 - r0, wc)
    return best[:h, :w], value[:h, :w]


def _distinct_first(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of window ids ``[cells, W]``: the slots reordered so that each distinct window
    comes once, first, and how many distinct windows the row has."""
    sorted_ids, order = ids.sort(dim=1)
    new = torch.ones_like(sorted_ids, dtype=torch.bool)
    new[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    first = (~new).to(torch.uint8).sort(dim=1, stable=True).indices
    return torch.gather(order, 1, first), new.sum(dim=1)


def _score_windows(
    q: torch.Tensor, table: _KeyTable, ref: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best position (grown numbering) and its relevance, un-normalised by the query patch
    norm, for each of the ``F x F`` positions of each cell, over that cell's windows.

    ``q``: the cells' padded query pixels ``[cells, (F+2)^2, C]``; ``ref``, ``y0``, ``x0``: the
    windows' reference and top-left position, ``[cells, windows]``.
    """
    f, side = FACTOR, FACTOR + 2 * MARGIN
    n, n_win = ref.shape
    span = torch.arange(side + 2, device=q.device)
    inner = torch.arange(side, device=q.device)
    ref, y0, x0 = ref.reshape(-1), y0.reshape(-1), x0.reshape(-1)
    k = table.pixels[table.pixel_index(ref, y0, x0, span).view(n, -1)]  # [cells, W (L+2)^2, C]
    products = torch.bmm(q, k.transpose(1, 2))
    del k
    products = products.view(n, f + 2, f + 2, n_win, side + 2, side + 2)
    rel = patch_sums(products, (1, 2), (4, 5))
    del products
    positions = table.position(ref, y0, x0, inner).view(n, 1, -1)
    rel = rel.reshape(n, f * f, -1) * table.inv_norm[positions] + table.bias[positions]
    top, arg = rel.max(dim=2)
    return torch.gather(positions.expand(-1, f * f, -1), 2, arg[..., None])[..., 0], top


def _cells_to_map(cells: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``[rows * cols, F * F]`` per-cell values -> ``[rows * F, cols * F]`` map."""
    f = FACTOR
    return cells.view(rows, cols, f, f).permute(0, 2, 1, 3).reshape(rows * f, cols * f)


class _KeyTable:
    """The references' lv3 maps, zero-padded by one pixel for patches (and up to the window
    side where a reference is smaller), as one ``[pixels, C]`` table; the inverse patch norm
    of every position, and a bias of -inf on positions that only exist as padding."""

    def __init__(self, keys: Sequence[torch.Tensor], side: int) -> None:
        """Built in place: one table the size of the keys plus a border, no other copies."""
        self.source = _Grids.of(keys)
        grown = [(max(k.shape[-2], side), max(k.shape[-1], side)) for k in keys]
        self.grids = _Grids(grown, keys[0].device)
        self.heights, self.widths = self.grids.heights, self.grids.widths
        self.padded = _Grids([(h + 2, w + 2) for h, w in grown], keys[0].device)
        self.inv_norm = keys[0].new_zeros(self.grids.total)
        self.bias = keys[0].new_full((self.grids.total,), float("-inf"))
        self.pixels = keys[0].new_zeros(self.padded.total, keys[0].shape[0])
        for i, (k, (gh, gw)) in enumerate(zip(keys, grown, strict=True)):
            h, w = k.shape[-2:]
            at = int(self.grids.offsets[i])
            inv_norm = self.inv_norm[at : at + gh * gw].view(gh, gw)
            inv_norm[:h, :w] = 1.0 / _patch_norms(k)
            self.bias[at : at + gh * gw].view(gh, gw)[:h, :w] = 0.0
            at = int(self.padded.offsets[i])
            pixels = self.pixels[at : at + (gh + 2) * (gw + 2)].view(gh + 2, gw + 2, -1)
            pixels[1 : h + 1, 1 : w + 1] = k.permute(1, 2, 0)

    def place(
        self, ref: torch.Tensor, top: torch.Tensor, left: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows of side ``FACTOR + 2 MARGIN`` shifted (not cut) to lie inside their
        reference: ``(ref, top, left)``."""
        side = FACTOR + 2 * MARGIN
        top = torch.minimum(top.clamp_min(0), self.heights[ref] - side)
        left = torch.minimum(left.clamp_min(0), self.widths[ref] - side)
        return ref, top, left

    def window_ids(self, ref: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
        """One number per placed window: the grown position of its top-left corner."""
        return self.grids.offsets[ref] + top * self.widths[ref] + left

    def pixel_index(
        self, ref: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, span: torch.Tensor
    ) -> torch.Tensor:
        """Rows of :attr:`pixels` for the ``(L+2)^2`` padded pixels of each window."""
        width = self.padded.widths[ref][:, None, None]
        start = self.padded.offsets[ref][:, None, None] + y0[:, None, None] * width
        return start + span[:, None] * width + x0[:, None, None] + span[None, :]

    def position(
        self, ref: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, inner: torch.Tensor
    ) -> torch.Tensor:
        """Global (grown) positions of the ``L^2`` positions of each window."""
        width = self.widths[ref][:, None, None]
        start = self.grids.offsets[ref][:, None, None] + y0[:, None, None] * width
        return start + inner[:, None] * width + x0[:, None, None] + inner[None, :]

    def original(self, positions: torch.Tensor) -> torch.Tensor:
        """Grown positions -> positions in the references as given (padding never wins)."""
        return self.source.join(*self.grids.split(positions))
