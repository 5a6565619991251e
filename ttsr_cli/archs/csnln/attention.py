"""In-scale (IS-NL) and cross-scale (CS-NL) non-local attention of CSNLN, exact, in bounded memory.

Both attentions relate every position of a feature map to every other one, so the official
code holds (positions x positions) matrices: quadratic in the image area.  Here they are
computed with the same numbers (up to float re-association) in pieces whose size the caller
bounds with ``chunk_bytes``; ``None`` means one piece, fine for training patches.

**IS-NL** is ``softmax(q k^T) v`` with no scale; ``q`` and ``k`` are ``channels / reduction``
wide, ``v`` is ``channels`` wide.  It runs on the library kernel
:func:`torch.nn.functional.scaled_dot_product_attention` with ``scale=1``.  Measured on CPU
(2 threads, 9,216 positions, q/k width 64, v width 128, fresh processes): with unequal widths
the library falls back to its math path and holds the whole score matrix (0.75 GB more);
with q and k zero-padded to v's width (zero columns leave every ``q.k`` unchanged) it takes
its flash kernel, which streams the keys in blocks (under 30 MB more), matches a float64
dense result to 3e-8, and ran in 0.55x the time of the best query-chunked matrix product
(0.5x at 2,304 positions).  So the padded library kernel is
used, restricted to the bounded backends whenever ``chunk_bytes`` is given, so that a bound
is never silently dropped.  Where no such kernel exists (``mps``, float64 on CUDA) the
query-chunked product is used instead.

**CS-NL** correlates every 3x3 query patch of the map (``H x W`` of them) with the 3x3 patches
of the map bilinearly downscaled by ``s`` (``L = HW / s^2`` keys, each normalised), takes a
softmax over the keys (logits times 10), and pastes each key's ``3s x 3s`` full-resolution
patch, weighted, with stride ``s`` (a transposed convolution of ``HW L C 9 s^2``
multiply-adds, most of the official network's work), divided by 6.  Two exact identities
remove nine tenths of that work:

* A 3x3 patch correlation is the sum, over the nine offsets ``o``, of pixel correlations
  ``q[t+o] . k[n+o]`` (zero outside the maps).  So the scores are one product of width
  ``channels / reduction`` followed by a *diagonal shift-sum* ``D(X)[t, n] = sum_o X[t+o, n+o]``
  over ``o`` in ``{-1, 0, 1}^2`` (separable into a row and a column pass).
* The paste puts ``P[i, l] E[s y_l + d]`` at output ``s i + d`` for ``d`` in ``[-s, 2s)^2``.
  Writing ``d = s m + r`` with ``m`` in ``{-1, 0, 1}^2`` and phase ``r`` in ``[0, s)^2``,
  output ``s t + r`` receives ``sum_n D(P)[t, n] E[s n + r]`` (the offset set is symmetric, so
  it is the same ``D``).  That is ``pixel_shuffle(D(P) @ pixel_unshuffle(E))``: a product
  ``HW x L x C s^2``, a ninth of the transposed convolution.

Query rows are streamed in chunks.  Each row pass of ``D`` needs the rows above and below, so
it emits a row once the next one has arrived and keeps the last two (:class:`_RowPass`): every
row of every matrix is computed once, whatever the chunk size, which matters for wide maps,
where a chunk may be a single row.

With no bound (``chunk_bytes=None``: training patches) each image is one piece, and ``D`` runs
as an autograd function whose backward is ``D`` of the gradient: ``D`` is its own adjoint,
because its offset set is symmetric.  Left to autograd, each of its in-place slice sums saves
and zero-fills a full-size copy, which made the backward several times the forward.  Under
autograd the piece is also checkpointed: its (positions x keys) matrices, most of a training
step's memory, are recomputed in the backward instead of kept, which costs no measurable time
(``tests/benchmarks/README.md``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

#: Official constants of the cross-scale attention: 3x3 matching patches, logits times 10,
#: pasted patches summed then divided by 6 (a fixed constant, kept for checkpoint parity).
PATCH = 3
SOFTMAX_SCALE = 10.0
PASTE_DIVISOR = 6.0

#: Library attention kernels that stream keys in blocks instead of forming the score matrix.
_BOUNDED_BACKENDS = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.CUDNN_ATTENTION,
]
_ALL_BACKENDS = [*_BOUNDED_BACKENDS, SDPBackend.MATH]
#: Where PyTorch has such a kernel: CPU (flash) for every float type; CUDA (flash, efficient,
#: cuDNN) for these types only (float64 has none there).
_CUDA_BOUNDED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: Live (chunk rows x keys) matrices while a CS-NL chunk is processed: a row pass's new block,
#: that block joined to the kept rows, and its output.
_CHUNK_COPIES = 3
#: Largest CS-NL working set whatever the budget: blocks that stay in cache are faster (x4 at
#: 48x48 LR on 2 CPU threads, the whole network took 10% longer with 32 MiB blocks, 20% with
#: one block per attention, and 15% with 4 MiB ones, too short for the products).
MAX_CHUNK_BYTES = 8 << 20


def conv_prelu(
    in_channels: int,
    out_channels: int,
    kernel: int,
    stride: int = 1,
    padding: int | None = None,
    transpose: bool = False,
) -> nn.Sequential:
    """A (transposed) convolution then a PReLU, as a two-entry ``Sequential`` because the
    official checkpoints name them ``.0`` and ``.1``.  Padding defaults to ``kernel // 2``."""
    conv = nn.ConvTranspose2d if transpose else nn.Conv2d
    pad = kernel // 2 if padding is None else padding
    return nn.Sequential(
        conv(in_channels, out_channels, kernel, stride=stride, padding=pad), nn.PReLU()
    )


def _spans(total: int, step: int) -> list[tuple[int, int]]:
    """``[0, total)`` cut into consecutive ``[start, stop)`` pieces of ``step`` (the last
    shorter)."""
    return [(start, min(start + step, total)) for start in range(0, total, step)]


def tokens(x: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` as ``[N, HW, C]``: a view of a channels-last map (the layout the network
    runs in, see :mod:`.model`), a copy of any other."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def in_scale_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_bytes: int | None = None
) -> torch.Tensor:
    """``softmax(q k^T) v`` per batch element for ``q, k: [N, P, d]``, ``v: [N, P, C]``.

    See the module docstring for why the library kernel is used with q and k zero-padded.
    """
    if chunk_bytes is not None and not _bounded_kernel_exists(q):
        return _in_scale_chunked(q, k, v, chunk_bytes)
    width = v.shape[-1] - q.shape[-1]
    q, k = F.pad(q, (0, width)).contiguous(), F.pad(k, (0, width)).contiguous()
    v = v.contiguous()  # the fused kernels need unit stride along the width
    backends = _ALL_BACKENDS if chunk_bytes is None else _BOUNDED_BACKENDS
    with sdpa_kernel(backends):
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=1.0)
    return out[:, 0]


def _bounded_kernel_exists(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" or (x.device.type == "cuda" and x.dtype in _CUDA_BOUNDED_DTYPES)


def _in_scale_chunked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_bytes: int
) -> torch.Tensor:
    """The same product with query rows in chunks: each holds its scores and their softmax."""
    out = v.new_empty(q.shape[0], q.shape[1], v.shape[2])
    rows = max(1, chunk_bytes // (2 * q.shape[0] * k.shape[1] * k.element_size()))
    for start, stop in _spans(q.shape[1], rows):
        scores = torch.matmul(q[:, start:stop], k.transpose(1, 2))
        out[:, start:stop] = torch.matmul(F.softmax(scores, dim=-1), v)
    return out


class InScaleAttention(nn.Module):
    """IS-NL: every position attends to all positions of the same map (pixel embeddings)."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        width = channels // reduction
        self.conv_match1 = conv_prelu(channels, width, 1)
        self.conv_match2 = conv_prelu(channels, width, 1)
        self.conv_assembly = conv_prelu(channels, channels, 1)

    def forward(self, x: torch.Tensor, chunk_bytes: int | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        q = tokens(self.conv_match1(x))
        k = tokens(self.conv_match2(x))
        v = tokens(self.conv_assembly(x))
        out = in_scale_attention(q, k, v, chunk_bytes)
        del q, k, v
        return out.reshape(n, h, w, c).permute(0, 3, 1, 2)


def _shift_sum_cols(a: torch.Tensor) -> torch.Tensor:
    """Column pass of ``D`` on ``a: [rows, W, h, w]``: query column and key column shift
    together by -1, 0, +1 (zero outside)."""
    out = a.clone()
    out[:, 1:, :, 1:] += a[:, :-1, :, :-1]
    out[:, :-1, :, :-1] += a[:, 1:, :, 1:]
    return out


def _shift_sum_rows(a: torch.Tensor, first: int, start: int, stop: int) -> torch.Tensor:
    """Row pass of ``D`` giving query rows ``[start, stop)`` from ``a`` (query rows
    ``[first, first + len(a))``, holding every neighbour of those rows inside the image)."""
    out = a[start - first : stop - first].clone()
    lo = max(start, first + 1)  # rows whose row above is in ``a``
    if lo < stop:
        out[lo - start :, :, 1:] += a[lo - 1 - first : stop - 1 - first, :, :-1]
    hi = min(stop, first + a.shape[0] - 1)  # rows whose row below is in ``a``
    if start < hi:
        out[: hi - start, :, :-1] += a[start + 1 - first : hi + 1 - first, :, 1:]
    return out


def _shift_sum(a: torch.Tensor) -> torch.Tensor:
    """``D`` over a whole ``[H, W, h, w]`` grid: the column pass, then the row pass."""
    return _shift_sum_rows(_shift_sum_cols(a), 0, 0, a.shape[0])


class _ShiftSum(torch.autograd.Function):
    """``D`` with ``D`` as its backward (see the module docstring)."""

    @staticmethod
    def forward(ctx: object, a: torch.Tensor) -> torch.Tensor:
        return _shift_sum(a)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return _shift_sum(grad)


class _RowPass:
    """The row pass of ``D`` over a map that arrives in consecutive blocks of rows.

    A row is emitted once the row below it has arrived (or it is the last); the two input rows
    the next emitted row needs are kept, so nothing is computed twice.
    """

    def __init__(self, height: int) -> None:
        self.height = height
        self.kept: torch.Tensor | None = None
        self.first = 0  # image row of kept[0]
        self.done = 0  # rows emitted so far

    def push(self, block: torch.Tensor) -> tuple[int, torch.Tensor]:
        """Feed the next rows; returns the first emitted row and the emitted rows (maybe none)."""
        rows = block if self.kept is None else torch.cat([self.kept, block])
        end = self.first + rows.shape[0]
        stop = end if end == self.height else end - 1
        start = self.done
        out = _shift_sum_rows(rows, self.first, start, stop)
        keep = max(stop - 1, self.first)
        self.kept = rows[keep - self.first :].clone()
        self.first, self.done = keep, stop
        return start, out


class _CrossScaleMaps:
    """One image's embeddings, flattened for the products, and the three steps on row blocks."""

    def __init__(
        self, e: torch.Tensor, q: torch.Tensor, r: torch.Tensor, s: int, eps: torch.Tensor
    ) -> None:
        self.height, self.width = e.shape[1:]
        self.key_height, self.key_width = r.shape[1:]
        self.s = s
        sq = r.pow(2).sum(0)[None, None]
        norms = F.conv2d(sq, sq.new_ones(1, 1, PATCH, PATCH), padding=PATCH // 2).flatten()
        self.key_scale = SOFTMAX_SCALE / torch.maximum(norms.sqrt(), eps.to(norms.dtype))
        self.queries = tokens(q[None])[0]
        self.keys = r.reshape(r.shape[0], -1)
        self.values = tokens(F.pixel_unshuffle(e[None], s))[0] / PASTE_DIVISOR

    def _grid(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.view(-1, self.width, self.key_height, self.key_width)

    def pixel_scores(self, start: int, stop: int) -> torch.Tensor:
        """Column pass of ``D`` on the pixel correlations of query rows ``[start, stop)``."""
        w = self.width
        return _shift_sum_cols(self._grid(self.queries[start * w : stop * w] @ self.keys))

    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Column pass of ``D`` on the softmax over keys of the patch scores."""
        probs = F.softmax(scores.view(-1, self.keys.shape[1]).mul_(self.key_scale), dim=-1)
        return _shift_sum_cols(self._grid(probs))

    def whole(self) -> torch.Tensor:
        """All query rows as one piece (``[C, s H, s W]``), differentiable through
        :class:`_ShiftSum`."""
        scores = _ShiftSum.apply(self._grid(self.queries @ self.keys))
        probs = F.softmax(scores.view(-1, self.keys.shape[1]) * self.key_scale, dim=-1)
        return self.paste(_ShiftSum.apply(self._grid(probs)))

    def paste(self, mixed: torch.Tensor) -> torch.Tensor:
        """Output rows for the mixed probability rows: ``[C, s rows, s W]`` (channels last)."""
        out = mixed.view(-1, self.keys.shape[1]) @ self.values
        grid = out.view(1, mixed.shape[0], self.width, -1).permute(0, 3, 1, 2)
        return F.pixel_shuffle(grid, self.s)[0]


def _cross_scale_image(maps: _CrossScaleMaps, out: torch.Tensor, rows: int) -> None:
    """Fill ``out`` (``[C, s H, s W]``) streaming query rows in chunks of ``rows``."""
    score_rows, mix_rows = _RowPass(maps.height), _RowPass(maps.height)
    for start, stop in _spans(maps.height, rows):
        _, scores = score_rows.push(maps.pixel_scores(start, stop))
        if not len(scores):
            continue
        probs = maps.probabilities(scores)
        del scores
        first, mixed = mix_rows.push(probs)
        del probs
        if len(mixed):
            out[:, first * maps.s : (first + len(mixed)) * maps.s] = maps.paste(mixed)
        del mixed


class CrossScaleAttention(nn.Module):
    """CS-NL: every query patch attends to the patches of the map downscaled by ``scale`` and
    pastes their ``scale``-times larger counterparts, so the output is ``scale`` times larger."""

    def __init__(self, channels: int, reduction: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.register_buffer("escape_NaN", torch.tensor([1e-4]))
        width = channels // reduction
        self.conv_match_1 = conv_prelu(channels, width, 1)
        self.conv_match_2 = conv_prelu(channels, width, 1)
        self.conv_assembly = conv_prelu(channels, channels, 1)

    def forward(self, x: torch.Tensor, chunk_bytes: int | None = None) -> torch.Tensor:
        n, c, h, w = x.shape
        s = self.scale
        if h % s or w % s:
            raise ValueError(f"cross-scale attention x{s} needs sides divisible by {s}: {h}x{w}")
        e = self.conv_assembly(x)
        q = self.conv_match_1(x)
        r = self.conv_match_2(F.interpolate(x, scale_factor=1 / s, mode="bilinear"))
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        if chunk_bytes is None:
            pieces = [self._whole(e[i], q[i], r[i]) for i in range(n)]
            return torch.stack(pieces).contiguous(memory_format=layout)
        out = torch.empty(
            (n, c, h * s, w * s), dtype=x.dtype, device=x.device, memory_format=layout
        )
        for i in range(n):
            maps = _CrossScaleMaps(e[i], q[i], r[i], s, self.escape_NaN)
            row_bytes = _CHUNK_COPIES * w * maps.keys.shape[1] * x.element_size()
            rows = max(1, min(chunk_bytes, MAX_CHUNK_BYTES) // row_bytes)
            _cross_scale_image(maps, out[i], rows)
            del maps
        return out

    def _whole(self, e: torch.Tensor, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """One image's output in one piece, checkpointed under autograd (module docstring)."""

        def piece(e: torch.Tensor, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return _CrossScaleMaps(e, q, r, self.scale, self.escape_NaN).whole()

        if not torch.is_grad_enabled():
            return piece(e, q, r)
        return checkpoint(piece, e, q, r, use_reentrant=False)
