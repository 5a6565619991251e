"""The LTE encoded in bands gives the whole image's features with a band's activations."""

from __future__ import annotations

import pytest
import torch

from ttsr_cli.archs.ttsr.lte import ALIGN, BAND_TENSORS, HALO, LTE, band_height, bands

WIDTHS = (8, 16, 32)


def lte() -> LTE:
    torch.manual_seed(0)
    return LTE(WIDTHS).eval()


def budget_for(rows: int, width: int) -> int:
    """The budget under which bands of ``rows`` rows are chosen for an image ``width`` wide."""
    return (rows + 2 * HALO) * width * WIDTHS[0] * 4 * BAND_TENSORS


def image(height: int = 61, width: int = 37) -> torch.Tensor:
    """Odd sides: the pools drop the last rows and columns, as they do on the whole image."""
    torch.manual_seed(1)
    return torch.rand(2, 3, height, width)


@pytest.mark.parametrize("rows", [4, 8, 20])
def test_banded_levels_equal_the_whole_image(rows: int) -> None:
    model, x = lte(), image()
    with torch.inference_mode():
        whole = model(x)
        banded = model.encode(x, budget_for(rows, x.shape[-1]))
        lv3 = model.encode_lv3(x, budget_for(rows, x.shape[-1]))
    for got, want in zip((*banded, lv3), (*whole, whole[2]), strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_bands_read_only_their_rows_and_halo() -> None:
    model, x = lte(), image(height=101)
    heights: list[int] = []
    model.sub_mean.register_forward_hook(lambda _m, args, _out: heights.append(args[0].shape[-2]))
    with torch.inference_mode():
        model.encode(x, budget_for(8, x.shape[-1]))
    assert len(heights) == len(list(bands(101, 8))) == 13
    assert max(heights) == 8 + 2 * HALO


def test_without_a_budget_or_within_one_band_it_is_the_plain_forward() -> None:
    model, x = lte(), image()
    with torch.inference_mode():
        whole = model(x)
        for budget in (None, budget_for(64, x.shape[-1])):
            assert all(map(torch.equal, model.encode(x, budget), whole))
            assert torch.equal(model.encode_lv3(x, budget), whole[2])


def test_levels_are_written_in_the_storage_dtype() -> None:
    model, x = lte(), image()
    with torch.inference_mode():
        whole = model(x)
        for budget in (None, budget_for(4, x.shape[-1])):
            half = model.encode(x, budget, torch.float16)
            assert all(h.dtype == torch.float16 for h in half)
            for got, want in zip(half, whole, strict=True):
                torch.testing.assert_close(got.float(), want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("budget", [1, 10**6, 10**8, 10**10])
def test_band_height_is_aligned_and_fits_the_budget(budget: int) -> None:
    rows = band_height(4000, 64, budget, 4)
    assert rows % ALIGN == 0 and rows >= ALIGN
    assert rows == ALIGN or (rows + 2 * HALO) * 4000 * 64 * 4 * BAND_TENSORS <= budget


def test_a_reference_encoded_in_bands_has_the_whole_references_key_and_values(
    tiny_model,
) -> None:
    torch.manual_seed(2)
    ref, refsr = torch.rand(1, 3, 52, 40) * 2 - 1, torch.rand(1, 3, 52, 40) * 2 - 1
    with torch.inference_mode():
        whole = tiny_model.encode_reference(ref, refsr)
        banded = tiny_model.encode_reference(ref, refsr, budget_for(8, 40))
    torch.testing.assert_close(banded.key, whole.key, atol=1e-6, rtol=1e-6)
    for got, want in zip(banded.values, whole.values, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
