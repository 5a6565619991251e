"""The fast (coarse-to-fine) search: valid, self-consistent and close to the exact search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_attention import dense_search

from conftest import run_cli, sample_image, save_png
from ttsr_cli.archs.ttsr import fast_search
from ttsr_cli.archs.ttsr.attention import relevance_search
from ttsr_cli.archs.ttsr.fast_search import choose_search, fast_relevance_search
from ttsr_cli.archs.ttsr.lte import LTE
from ttsr_cli.pixels import resize_bicubic

BUDGET = 1 << 26


def lv3(lte: LTE, rgb: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return lte.lv3(torch.from_numpy(rgb.copy()).permute(2, 0, 1).float()[None] / 255)


def down_up(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    return resize_bicubic(resize_bicubic(rgb, w // 4, h // 4), w, h)


@pytest.fixture(scope="module")
def photo_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """LR-up and Ref-down-up features of two overlapping crops of a real photo."""
    torch.manual_seed(0)
    lte = LTE((16, 32, 64)).eval()
    image = sample_image("astronaut")
    return lv3(lte, down_up(image[:320, :384])), lv3(lte, down_up(image[96:448, 64:480]))


def relevance(query: torch.Tensor, keys: list[torch.Tensor]) -> torch.Tensor:
    """Dense cosine relevance ``[query positions, key positions]`` (keys concatenated)."""
    q = F.normalize(F.unfold(query, 3, padding=1)[0], dim=0)
    k = torch.cat([F.normalize(F.unfold(key, 3, padding=1)[0], dim=0) for key in keys], dim=1)
    return q.t() @ k


def test_small_references_are_searched_exactly() -> None:
    query, key = torch.rand(1, 8, 20, 30), torch.rand(1, 8, 40, 50)
    assert fast_search.EXACT_KEYS >= 40 * 50
    fast = fast_relevance_search(query, [key], BUDGET)
    index, score = dense_search(query, key)
    assert torch.equal(fast.index, index)
    torch.testing.assert_close(fast.score, score)


def test_fast_matches_are_real_and_almost_as_relevant(photo_pair) -> None:
    query, key = photo_pair
    assert key.shape[-2] * key.shape[-1] > fast_search.EXACT_KEYS  # the coarse-to-fine path
    fast = fast_relevance_search(query, [key], BUDGET)
    exact = relevance_search(query, [key], BUDGET)
    dense = relevance(query, [key])
    chosen = dense.gather(1, fast.index.view(-1, 1)).view_as(fast.score)
    # The reported soft attention is the relevance of the reported match, never above the best.
    torch.testing.assert_close(fast.score, chosen, atol=1e-5, rtol=1e-5)
    assert bool((fast.score <= exact.score + 1e-5).all())
    assert (fast.index == exact.index).float().mean() > 0.7
    assert (exact.score - fast.score).mean() < 2e-3


def test_self_reference_finds_every_patch_itself(photo_pair) -> None:
    query, _ = photo_pair
    fast = fast_relevance_search(query, [query], BUDGET)
    assert fast.score.min() > 1 - 1e-5


def test_several_references_index_their_union(photo_pair) -> None:
    """A reference smaller than a search window, and one holding the query's true texture."""
    query, key = photo_pair
    tiny = key[..., :3, :5]
    fast = fast_relevance_search(query, [tiny, key], BUDGET)
    total = tiny.shape[-2] * tiny.shape[-1] + key.shape[-2] * key.shape[-1]
    assert int(fast.index.min()) >= 0 and int(fast.index.max()) < total
    dense = relevance(query, [tiny, key])
    chosen = dense.gather(1, fast.index.view(-1, 1)).view_as(fast.score)
    torch.testing.assert_close(fast.score, chosen, atol=1e-5, rtol=1e-5)
    alone = fast_relevance_search(query, [key], BUDGET)
    assert fast.score.mean() >= alone.score.mean() - 1e-3


def test_batches_search_each_image_against_a_shared_reference(photo_pair) -> None:
    query, key = photo_pair
    both = fast_relevance_search(torch.cat([query, query.flip(-1)]), [key], BUDGET)
    first = fast_relevance_search(query, [key], BUDGET)
    assert torch.equal(both.index[:1], first.index)


def test_auto_goes_fast_only_where_exact_would_be_slow() -> None:
    assert choose_search(120 * 80, 120 * 80, 256) == "exact"  # CUFED5 size
    assert choose_search(1000 * 750, 1000 * 750, 64) == "fast"  # 12-megapixel output


@pytest.mark.parametrize(("search", "expected"), [("fast", "fast"), ("auto", "exact")])
def test_cli_search_modes(tmp_path: Path, tiny_weights: Path, search: str, expected: str) -> None:
    """A reference with more positions than the exact threshold, through ``ttsr upscale``."""
    lr = save_png(tmp_path / "lr.png", sample_image("astronaut", (64, 48)))
    ref = save_png(tmp_path / "ref.png", sample_image("astronaut", (288, 288)))
    assert fast_search.EXACT_KEYS < (288 // 4) ** 2
    out = tmp_path / "sr.png"
    args = ("upscale", lr, "--ref", ref, "-w", tiny_weights, "-o", out, "--json")
    result = run_cli(*args, "--search", search)
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)["results"]
    assert record["search"] == expected and record["tiles"] == 1
    assert Image.open(out).size == (256, 192)


def test_cli_unknown_search_is_a_usage_error(tmp_path: Path, tiny_weights: Path) -> None:
    lr = save_png(tmp_path / "lr.png", sample_image("astronaut", (32, 32)))
    result = run_cli("upscale", lr, "-w", tiny_weights, "--search", "fastest")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.stderr


def test_with_a_propagation_pass(photo_pair, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second pass on the neighbours' fine matches (off by default) is consistent too."""
    monkeypatch.setattr(fast_search, "PROPAGATION_PASSES", 1)
    query, key = photo_pair
    fast = fast_relevance_search(query, [key], BUDGET)
    chosen = relevance(query, [key]).gather(1, fast.index.view(-1, 1)).view_as(fast.score)
    torch.testing.assert_close(fast.score, chosen, atol=1e-5, rtol=1e-5)


def test_each_distinct_window_is_scored_once() -> None:
    """Windows that neighbours share are gathered once: distinct ids first, then the count."""
    ids = torch.tensor([[5, 5, 3, 5, 3, 9], [7, 7, 7, 7, 7, 7]])
    slots, counts = fast_search._distinct_first(ids)
    assert counts.tolist() == [3, 1]
    assert sorted(ids[0, slots[0, :3]].tolist()) == [3, 5, 9]
    assert ids[1, slots[1, 0]] == 7


def test_key_levels_are_made_once_per_reference_set_and_kept_by_its_holder(photo_pair) -> None:
    """Tiles and images searched against one reference share its pooled levels and tables
    through the index their holder keeps; reusing them changes no match, and a search given
    no index (or one of other keys) keeps nothing behind."""
    query, key = photo_pair
    index = fast_search.KeyIndex([key])
    first = fast_relevance_search(query, [key], BUDGET, index)
    levels = index.levels(0)
    tables = dict(levels._tables)
    assert tables  # the finer levels' tables were built
    fast_relevance_search(query[..., :24, :40], [key], BUDGET, index)  # another tile
    assert index.levels(0) is levels and all(levels._tables[k] is t for k, t in tables.items())
    assert torch.equal(fast_relevance_search(query, [key], BUDGET, index).index, first.index)
    other = fast_search.KeyIndex([key.clone()])
    assert not other.holds([key]) and index.holds([key])
    assert torch.equal(fast_relevance_search(query, [key], BUDGET, other).index, first.index)
    assert not other._levels  # made from other keys: not used, not filled
    assert not hasattr(fast_search, "_LEVELS")
