"""CSNLN network: official checkpoints load strictly and reproduce the official pixels; the
bounded-memory attentions equal the dense official formulation; bad files and sizes are refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from csnln_dense import dense_cross_scale, dense_forward, dense_in_scale
from PIL import Image
from torch.profiler import profile

from ttsr_cli.archs import check_state_dict
from ttsr_cli.archs.csnln import attention
from ttsr_cli.archs.csnln.attention import CrossScaleAttention, InScaleAttention
from ttsr_cli.archs.csnln.load import FAMILY, infer_config
from ttsr_cli.archs.csnln.model import CSNLN, CSNLNConfig
from ttsr_cli.errors import TTSRError

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "csnln-official"
SCALES = (2, 3, 4)
TOLERANCE = 3e-5  # the fixture's: about 10x the official model's own float noise
SMALL = {"n_feats": 16, "depth": 2}


def _fixture() -> Path:
    if not (FIXTURE / "parity.pt").is_file():
        pytest.skip("../shared/fixtures/csnln-official not found")
    return FIXTURE


def _make_weights() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_weights", _fixture() / "make_weights.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def official() -> dict[int, dict[str, torch.Tensor]]:
    make = _make_weights()
    return {s: make.make_state_dict(str(FIXTURE / f"keys_x{s}.json")) for s in SCALES}


@pytest.fixture(scope="module")
def parity() -> dict:
    return torch.load(_fixture() / "parity.pt", weights_only=True)


@pytest.fixture(scope="module")
def models(official: dict[int, dict[str, torch.Tensor]]) -> dict[int, CSNLN]:
    return {s: FAMILY.build(FAMILY.normalize(state), {})[0] for s, state in official.items()}


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Weights large enough that the attentions are selective, PReLU slopes all distinct."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith(("sub_mean", "add_mean")):
                continue
            z = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if p.dim() == 4:
                gain = 6.0 if "conv_match" in name else 0.9
                p.copy_(z * gain / (p[0].numel() ** 0.5))
            else:
                p.copy_(0.25 + 0.05 * z if p.shape == (1,) else 0.01 * z)


def _check_pixels(sr: torch.Tensor, expected: dict[str, torch.Tensor]) -> None:
    official = expected["sr"]
    assert sr.shape == official.shape
    assert (sr - official).abs().max().item() <= TOLERANCE
    got = (sr * 255).clamp(0, 255).round()[0].permute(1, 2, 0)
    want = expected["sr_uint8"].float()
    scaled = official[0].permute(1, 2, 0) * 255
    near_boundary = (scaled - scaled.floor() - 0.5).abs() <= TOLERANCE * 255
    assert not ((got != want) & ~near_boundary).any()


@pytest.mark.parametrize("scale", SCALES)
def test_official_checkpoint_loads_strictly(official, models, scale: int) -> None:
    state = official[scale]
    assert FAMILY.detect(state)
    config = infer_config(state)
    assert config == CSNLNConfig(scale=scale, n_feats=128, depth=12, rgb_range=1.0, reduction=2)
    model, descriptor = FAMILY.build(FAMILY.normalize(state), config.to_dict())
    assert not model.training
    assert descriptor.family == "csnln" and descriptor.scale == scale
    assert not descriptor.takes_reference and descriptor.tiling.kind == "global"
    assert descriptor.size_multiple == (3 if scale == 3 else 2)
    assert set(descriptor.dtypes) == {"fp32", "fp16", "bf16"}
    spec = json.loads((FIXTURE / f"keys_x{scale}.json").read_text())
    own = [[key, list(t.shape)] for key, t in model.state_dict().items()]
    assert own == spec["keys"]
    assert descriptor.parameters == spec["num_values"] - sum(
        1 for key, _ in spec["keys"] if key.endswith("escape_NaN")
    )
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[key]), key


@pytest.mark.parametrize("scale", SCALES)
def test_official_pixels(models, parity, scale: int) -> None:
    expected = parity[f"x{scale}"]
    # so the PNGs are covered too: lr is lr_xN.png times 1/255 (np2Tensor), sr_uint8 is sr_xN.png
    lr_png = torch.from_numpy(np.array(Image.open(FIXTURE / f"lr_x{scale}.png").convert("RGB")))
    assert torch.equal(lr_png.permute(2, 0, 1)[None].float() * (1 / 255), expected["lr"])
    sr_png = torch.from_numpy(np.array(Image.open(FIXTURE / f"sr_x{scale}.png").convert("RGB")))
    assert torch.equal(sr_png, expected["sr_uint8"])
    with torch.inference_mode():
        sr = models[scale](expected["lr"])
    _check_pixels(sr, expected)


@pytest.mark.parametrize("scale", SCALES)
def test_official_pixels_in_tiny_chunks(models, parity, monkeypatch, scale: int) -> None:
    pieces: list[int] = []
    spans = attention._spans

    def counting(total: int, step: int) -> list[tuple[int, int]]:
        out = spans(total, step)
        pieces.append(len(out))
        return out

    monkeypatch.setattr(attention, "_spans", counting)
    expected = parity[f"x{scale}"]
    with torch.inference_mode():
        sr = models[scale](expected["lr"], chunk_bytes=1)
    _check_pixels(sr, expected)
    assert len(pieces) == 12 * (2 if scale == 4 else 1)  # every cross-scale attention call
    assert min(pieces) == expected["lr"].shape[2] > 1  # one query row per chunk


def test_in_scale_attention_uses_a_bounded_kernel() -> None:
    q, k, v = torch.randn(1, 50, 4), torch.randn(1, 50, 4), torch.randn(1, 50, 8)
    with profile() as prof:
        attention.in_scale_attention(q, k, v, chunk_bytes=1)
    names = {event.key for event in prof.key_averages()}
    assert any("flash_attention" in name for name in names), names
    assert "aten::_softmax" not in names and "aten::bmm" not in names


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_cross_scale_matches_dense(scale: int, dtype: torch.dtype, layout) -> None:
    attn = CrossScaleAttention(16, 2, scale).to(dtype)
    _randomize(attn, scale)
    x = torch.randn(2, 16, 4 * scale, 7 * scale, generator=torch.Generator().manual_seed(1))
    x = x.to(dtype).contiguous(memory_format=layout)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    with torch.no_grad():
        dense = dense_cross_scale(attn, x)
        for chunk_bytes in (None, 1, 20_000, 50_000, 100_000):  # 4 * scale rows: 1, 2, 3, ...
            assert (attn(x, chunk_bytes) - dense).abs().max().item() < tol
        with pytest.raises(ValueError, match="divisible"):
            attn(x[..., 1:, :])


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_cross_scale_gradients_match_dense(scale: int) -> None:
    """The training path's backward (``D`` as its own adjoint) gives the dense formulation's
    gradients, for the input and for every weight."""
    attn = CrossScaleAttention(16, 2, scale).double()
    _randomize(attn, scale)
    x = torch.randn(2, 16, 4 * scale, 5 * scale, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 16, 4 * scale * scale, 5 * scale * scale, dtype=torch.float64)
    grads = []
    for forward in (attn, lambda t: dense_cross_scale(attn, t)):
        x.grad = None
        attn.zero_grad()
        (forward(x) * grad_out).sum().backward()
        grads.append([x.grad.clone(), *(p.grad.clone() for p in attn.parameters())])
    for ours, dense in zip(*grads, strict=True):
        assert dense.abs().max() > 0
        assert (ours - dense).abs().max().item() < 1e-9 * (1 + dense.abs().max().item())


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("chunk_bytes", [None, 1])
def test_in_scale_matches_dense(chunk_bytes: int | None, layout) -> None:
    attn = InScaleAttention(16, 2).double()
    _randomize(attn, 5)
    x = torch.randn(2, 16, 6, 9, dtype=torch.float64).contiguous(memory_format=layout)
    with torch.no_grad():
        dense = dense_in_scale(attn, x)
        assert (attn(x, chunk_bytes) - dense).abs().max().item() < 1e-10
        q, k, v = (torch.randn(2, 40, d, dtype=torch.float64) for d in (8, 8, 16))
        expected = torch.softmax(q @ k.transpose(1, 2), dim=-1) @ v
        got = attention._in_scale_chunked(q, k, v, chunk_bytes or 1 << 30)
        assert (got - expected).abs().max().item() < 1e-12


@pytest.mark.parametrize("scale", SCALES)
def test_network_matches_dense_oracle(scale: int) -> None:
    torch.manual_seed(scale)
    model, descriptor = FAMILY.create({"scale": scale, **SMALL})
    _randomize(model, scale)
    m = descriptor.size_multiple
    x = torch.rand(2, 3, 3 * m, 5 * m)
    with torch.no_grad():
        dense = dense_forward(model.eval(), x)
        for chunk_bytes in (None, 1):
            out = model(x, chunk_bytes)
            assert out.shape == (2, 3, 3 * m * scale, 5 * m * scale)
            assert (out - dense).abs().max().item() < 2e-5


def test_training_step_has_gradients() -> None:
    model, _ = FAMILY.create({"scale": 4, **SMALL})
    x = torch.rand(1, 3, 4, 6)
    model(x).square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["SEM.multi_source_projection_2.up_attention.conv_match_2.0.weight"].abs().sum() > 0


def test_create_is_the_default_init() -> None:
    model, descriptor = FAMILY.create({"scale": 3, **SMALL})
    state = model.state_dict()
    assert descriptor.parameters == sum(p.numel() for p in model.parameters())
    escape = state["SEM.multi_source_projection.up_attention.escape_NaN"]
    assert escape.dtype == torch.float32 and escape.item() == pytest.approx(1e-4)
    assert state["head.0.1.weight"].item() == 0.25
    assert torch.allclose(state["sub_mean.bias"], -torch.tensor([0.4488, 0.4371, 0.4040]))
    assert torch.equal(state["add_mean.weight"].flatten(), torch.eye(3).flatten())
    assert descriptor.config == CSNLNConfig(scale=3, **SMALL).to_dict()


def test_wrong_scale_is_refused(official) -> None:
    x2 = official[2]
    with pytest.raises(TTSRError) as excinfo:
        FAMILY.build(dict(x2), {"scale": 4})
    assert "metadata says scale 4 but tensors say scale 2" in _one_line(excinfo)
    with pytest.raises(TTSRError) as excinfo:
        check_state_dict(CSNLN(CSNLNConfig(scale=4)), x2, "CSNLN x4")
    assert "SEM.down_sample_2" in _one_line(excinfo)
    mixed = {**x2, "SEM.down_sample_3.0.weight": official[4]["SEM.down_sample_3.0.weight"]}
    with pytest.raises(TTSRError) as excinfo:
        FAMILY.build(mixed, {})
    _one_line(excinfo)


def test_prefixed_checkpoint_is_refused(official) -> None:
    prefixed = {"module." + key: t for key, t in official[3].items()}
    assert FAMILY.detect(prefixed)
    with pytest.raises(TTSRError) as excinfo:
        FAMILY.normalize(prefixed)
    assert "module." in _one_line(excinfo)


def test_inconsistent_shapes_are_one_line() -> None:
    state = CSNLN(CSNLNConfig(scale=2, **SMALL)).state_dict()
    state["tail.0.weight"] = torch.zeros(3, 40, 3, 3)  # not a multiple of n_feats 16
    with pytest.raises(TTSRError) as excinfo:
        FAMILY.build(state, {})
    _one_line(excinfo)
    state = CSNLN(CSNLNConfig(scale=2, **SMALL)).state_dict()
    state["sub_mean.bias"] = torch.tensor([-0.5, 0.1, 0.2])
    with pytest.raises(TTSRError) as excinfo:
        FAMILY.build(state, {})
    _one_line(excinfo)
    with pytest.raises(TTSRError) as excinfo:
        FAMILY.build(CSNLN(CSNLNConfig(scale=2, **SMALL)).state_dict(), {"width": 3})
    _one_line(excinfo)


def test_other_networks_are_not_detected() -> None:
    ttsr = {
        "MainNet.SFE.conv_head.weight": torch.zeros(64, 3, 3, 3),
        "MainNet.SFE.conv_tail.weight": torch.zeros(64, 64, 3, 3),
        "LTE.slice1.0.weight": torch.zeros(64, 3, 3, 3),
        "head.0.weight": torch.zeros(64, 3, 3, 3),
        "tail.0.weight": torch.zeros(3, 64, 3, 3),
    }
    assert not FAMILY.detect(ttsr)
    assert not FAMILY.detect({})


def test_rgb_range_is_read_from_the_mean_shift() -> None:
    state = CSNLN(CSNLNConfig(scale=2, rgb_range=255, **SMALL)).state_dict()
    assert infer_config(state).rgb_range == 255.0


@pytest.mark.parametrize(
    ("scale", "size", "ok"),
    [
        (2, (31, 40), False),
        (2, (30, 41), False),
        (3, (25, 30), False),
        (3, (26, 26), False),
        (4, (25, 32), False),
        (4, (24, 33), False),
        (3, (27, 33), True),
        (2, (2, 4), True),
    ],
)
def test_sizes(scale: int, size: tuple[int, int], ok: bool) -> None:
    model = CSNLN(CSNLNConfig(scale=scale, n_feats=4, depth=1)).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        if ok:
            assert model(x).shape == (1, 3, size[0] * scale, size[1] * scale)
        else:
            with pytest.raises(ValueError, match="divisible"):
                model(x)


def test_config_round_trip_and_validation() -> None:
    config = CSNLNConfig(scale=3, n_feats=32, depth=4, rgb_range=255, reduction=4)
    assert CSNLNConfig.from_dict(config.to_dict()) == config
    assert isinstance(config.to_dict()["rgb_range"], float)
    with pytest.raises(ValueError, match="unknown"):
        CSNLNConfig.from_dict({"scale": 2, "n_resblocks": 3})
    for bad in ({"scale": 5}, {"n_feats": 30, "reduction": 4}, {"depth": 0}, {"rgb_range": 0}):
        with pytest.raises(ValueError):
            CSNLNConfig(**{"scale": 2, **bad})
    with pytest.raises(TTSRError) as excinfo:
        FAMILY.create({"scale": 8})
    _one_line(excinfo)
