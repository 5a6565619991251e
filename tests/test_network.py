"""The network has the paper's structure, the original's keys, and runs on any input size."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY, require_official
from ttsr_cli.archs.ttsr import TTSR, TTSRConfig
from ttsr_cli.archs.ttsr.lte import LTE


def test_paper_configuration_has_exactly_the_original_keys_and_shapes() -> None:
    expected = json.loads((require_official() / "default_keys.json").read_text())
    got = {k: list(v.shape) for k, v in TTSR(TTSRConfig()).state_dict().items()}
    assert got == expected


def test_paper_configuration_has_the_published_parameter_count() -> None:
    assert sum(p.numel() for p in TTSR().state_dict().values()) == 6_729_615


def test_lte_normalises_with_imagenet_statistics() -> None:
    lte = LTE()
    x = torch.rand(1, 3, 4, 4)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(lte.sub_mean(x), (x - mean) / std)
    assert not lte.sub_mean.weight.requires_grad
    lv1, lv2, lv3 = lte(x)
    assert (
        lv1.shape == (1, 64, 4, 4) and lv2.shape == (1, 128, 2, 2) and lv3.shape == (1, 256, 1, 1)
    )


@pytest.mark.parametrize(("h", "w", "hr", "wr"), [(1, 1, 4, 4), (5, 7, 12, 20), (6, 3, 8, 8)])
def test_any_size_gives_exactly_four_times_the_input(h: int, w: int, hr: int, wr: int) -> None:
    torch.manual_seed(0)
    model = TTSR(TINY).eval()
    lr = torch.rand(2, 3, h, w) * 2 - 1
    lrsr = torch.rand(2, 3, 4 * h, 4 * w) * 2 - 1
    ref = torch.rand(2, 3, hr, wr) * 2 - 1
    with torch.inference_mode():
        out = model(lr, lrsr, ref, ref.clone())
    assert out.sr.shape == (2, 3, 4 * h, 4 * w)
    assert out.S.shape == (2, 1, h, w)
    assert out.T_lv1.shape == (2, 8, 4 * h, 4 * w)
    assert out.sr.abs().max() <= 1.0


def test_a_reference_identical_to_the_input_is_matched_in_place() -> None:
    """Hard attention finds the true location when the texture is there to find."""
    torch.manual_seed(0)
    model = TTSR(TINY).eval()
    img = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 8, 12), img, img, img)
    assert torch.equal(out.hard_index[0], torch.arange(8 * 12))
    torch.testing.assert_close(out.S, torch.ones_like(out.S))


def test_config_round_trips_and_rejects_bad_values() -> None:
    assert TTSRConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError):
        TTSRConfig(n_feats=7)
    with pytest.raises(ValueError):
        TTSRConfig.from_dict({**TINY.to_dict(), "colour": 1})


def test_gradients_reach_every_trainable_tensor() -> None:
    """In-place memory savings must not break training: backward runs and reaches the LTE
    (through S and T, as in the original) and every main-network tensor."""
    torch.manual_seed(0)
    model = TTSR(TINY).train()
    lr = torch.rand(2, 3, 6, 5) * 2 - 1
    lrsr = torch.rand(2, 3, 24, 20) * 2 - 1
    ref = torch.rand(2, 3, 24, 20) * 2 - 1
    out = model(lr, lrsr, ref, ref.clone())
    (out.sr.square().mean() + out.T_lv1.mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert model.LTE.slice3[-2].weight.grad.abs().sum() > 0
