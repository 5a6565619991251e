"""The bounded-memory search and block transfer give exactly what the dense original gives."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from ttsr_cli.archs.ttsr.attention import _tiles, plan_chunks, relevance_search, transfer


def dense_search(query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's search: the full relevance matrix, then max over reference positions."""
    n, _, h, w = query.shape
    q = F.normalize(F.unfold(query, 3, padding=1), dim=1)
    k = F.normalize(F.unfold(key, 3, padding=1).permute(0, 2, 1), dim=2)
    score, index = torch.bmm(k.expand(n, -1, -1), q).max(dim=1)
    return index, score.view(n, 1, h, w)


def dense_transfer(values: list[torch.Tensor], index: torch.Tensor, h: int, w: int, s: int):
    """The original's transfer: unfold whole references, gather columns, fold back / 9.

    With several references their unfolded columns are concatenated, so every patch is cut
    (and zero-padded) at its own reference's borders.
    """
    unfolded = torch.cat(
        [F.unfold(v, kernel_size=3 * s, padding=s, stride=s) for v in values], dim=2
    )
    gathered = torch.gather(unfolded, 2, index.unsqueeze(1).expand(-1, unfolded.shape[1], -1))
    return F.fold(gathered, (h * s, w * s), kernel_size=3 * s, padding=s, stride=s) / 9.0


@pytest.mark.parametrize("budget", [10**9, 200_000, 20_000, 1])
def test_chunked_search_equals_dense(budget: int) -> None:
    torch.manual_seed(1)
    query = torch.rand(2, 16, 9, 13)
    key = torch.rand(2, 16, 11, 7)
    match = relevance_search(query, [key], budget)
    index, score = dense_search(query, key)
    assert torch.equal(match.index, index)
    torch.testing.assert_close(match.score, score, atol=1e-6, rtol=0)


def test_search_broadcasts_one_reference_over_a_batch() -> None:
    torch.manual_seed(2)
    query, key = torch.rand(3, 8, 6, 5), torch.rand(1, 8, 4, 9)
    match = relevance_search(query, [key], 4096)
    index, _ = dense_search(query, key)
    assert torch.equal(match.index, index)


def test_several_references_are_searched_as_one_union() -> None:
    torch.manual_seed(3)
    query = torch.rand(1, 8, 7, 6)
    keys = [torch.rand(1, 8, 5, 9), torch.rand(1, 8, 8, 3), torch.rand(1, 8, 2, 2)]
    match = relevance_search(query, keys, 3000)
    results = [dense_search(query, k) for k in keys]
    scores = torch.stack([s.flatten() for _, s in results])
    best_ref = scores.argmax(dim=0)
    offsets = torch.tensor([0, 45, 69])
    expected = torch.stack([i.flatten() for i, _ in results])[best_ref, torch.arange(42)]
    assert torch.equal(match.index[0], expected + offsets[best_ref])
    torch.testing.assert_close(match.score.flatten(), scores.max(dim=0).values)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_block_transfer_equals_unfold_fold(scale: int) -> None:
    torch.manual_seed(4)
    h, w, hr, wr = 5, 7, 6, 4
    value = torch.rand(2, 3, hr * scale, wr * scale)
    index = torch.randint(0, hr * wr, (2, h * w))
    index[0, :4] = torch.tensor([0, wr - 1, hr * wr - 1, (hr - 1) * wr])  # the four corners
    got = transfer([value], index, (h, w), scale)
    torch.testing.assert_close(got, dense_transfer([value], index, h, w, scale))


@pytest.mark.parametrize("scale", [1, 4])
def test_transfer_from_several_references_cuts_patches_at_each_ones_borders(scale: int) -> None:
    torch.manual_seed(5)
    first, second = torch.rand(1, 4, 2 * scale, 3 * scale), torch.rand(1, 4, 3 * scale, scale)
    index = torch.tensor([[0, 5, 6, 8, 2, 7, 3, 6, 1, 8, 4, 0]])  # 0-5 first, 6-8 second
    got = transfer([first, second], index, (3, 4), scale)
    torch.testing.assert_close(got, dense_transfer([first, second], index, 3, 4, scale))


@pytest.mark.parametrize("scale", [1, 4])
def test_transfer_casts_blocks_gathered_from_narrower_storage(scale: int) -> None:
    torch.manual_seed(6)
    first, second = torch.rand(1, 4, 2 * scale, 3 * scale), torch.rand(1, 4, 3 * scale, scale)
    index = torch.tensor([[0, 5, 6, 8, 2, 7, 3, 6, 1, 8, 4, 0]])
    stored = [first.half(), second.half()]
    got = transfer(stored, index, (3, 4), scale, torch.float32)
    assert got.dtype == torch.float32
    want = dense_transfer([v.float() for v in stored], index, 3, 4, scale)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(
        got, dense_transfer([first, second], index, 3, 4, scale), atol=1e-3, rtol=0
    )


def test_transfer_never_copies_the_reference() -> None:
    """A 12-megapixel reference's lv1 is 3 GB: no allocation may scale with it, only with
    the output (here 16 positions of 4x4 blocks), for values kept channels-last as
    ``TTSR.encode_reference`` keeps them."""
    value = torch.rand(1, 64, 400, 400).contiguous(memory_format=torch.channels_last)
    index = torch.randint(0, 100 * 100, (1, 16))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        transfer([value], index, (4, 4), 4)
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert largest < value.numel() * value.element_size() // 20


def test_plan_fits_the_budget_and_uses_it() -> None:
    elem, n = 4, 252 * 168  # a 250x166 lv3 map with its halo
    for budget in (1 << 20, 64 << 20, 1 << 30):
        plan = plan_chunks(n, n, budget, elem)
        used = elem * 3 * plan.query * plan.key
        assert used <= budget
        # halving was the only reduction, so doubling either side would not have fitted
        assert plan.query * 2 > n or plan.key * 2 > n or used * 2 > budget
    small = plan_chunks(10, 20, 1 << 30, elem)
    assert (small.query, small.key) == (10, 20)


@pytest.mark.parametrize(
    ("h", "w", "positions"), [(7, 5, 1000), (7, 5, 30), (7, 5, 9), (1, 1, 1), (40, 90, 400)]
)
def test_tiles_cover_every_position_once(h: int, w: int, positions: int):
    seen = []
    for tile in _tiles(h, w, positions):
        assert (tile.height + 2) * (tile.width + 2) <= max(positions, 9)
        seen += [y * w + x for y in range(tile.y0, tile.y1) for x in range(tile.x0, tile.x1)]
    assert sorted(seen) == list(range(h * w))


def test_tiles_are_square_where_the_map_allows() -> None:
    tiles = list(_tiles(40, 90, 400))
    assert (tiles[0].height, tiles[0].width) == (18, 18)


def test_ties_go_to_the_lowest_position_whatever_the_tile_order() -> None:
    """Every key patch equal: the dense arg-max is position 0, with any block sizes."""
    query, key = torch.rand(1, 3, 6, 6), torch.ones(1, 3, 9, 9)
    key[..., 0, :] = key[..., -1, :] = key[..., :, 0] = key[..., :, -1] = 2.0  # unequal rim
    for budget in (10**9, 3000, 400):
        index, _ = dense_search(query, key)
        assert torch.equal(relevance_search(query, [key], budget).index, index)


def test_zero_patches_match_nothing_better_than_the_first_position() -> None:
    """A featureless (all-zero) patch has relevance 0 everywhere, like F.normalize gives."""
    query = torch.zeros(1, 4, 3, 3)
    key = torch.rand(1, 4, 5, 5)
    match = relevance_search(query, [key], 1 << 20)
    index, score = dense_search(query, key)
    assert torch.equal(match.index, index)
    assert torch.equal(match.score, score)


_MEASURE = """
import resource, sys, torch
from ttsr_cli.archs.ttsr.attention import search_working_bytes
from ttsr_cli.archs.ttsr.model import SEARCHES
search = SEARCHES[sys.argv[1]]
torch.manual_seed(0)
query, key = torch.rand(1, 64, 48, 48), torch.rand(1, 64, 400, 400)
search(query[..., :8, :8], [key[..., :80, :80]], 1 << 30)  # kernels, thread pools
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
search(query, [key], 1 << 30)
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(grown, search_working_bytes([key], 1 << 30), query.numel() * 4, key.numel() * 4)
"""


@pytest.mark.parametrize("search", ["exact", "fast"])
def test_search_holds_no_more_than_tiles_leave_it(search: str) -> None:
    """The pipeline sizes tiles by leaving ``search_working_bytes`` free for the search, not
    its budget (1 GB here, far more): peak RSS in a fresh process, with a 41 MB key, must grow
    by no more than that plus the query-sized maps (padded copy, norms, index, score)."""
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, search], capture_output=True, text=True, check=True
    )
    grown, reserved, query_bytes, key_bytes = map(int, result.stdout.split())
    assert reserved < 4 * key_bytes  # far below the 1 GB budget
    assert grown <= reserved + 8 * query_bytes, (grown, reserved)
