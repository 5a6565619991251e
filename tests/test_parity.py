"""The published weights give the original code's pixels (../shared/fixtures/ttsr-official)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from ttsr_cli.weights import load


@pytest.fixture(scope="module")
def parity() -> dict:
    from conftest import require_official

    return torch.load(require_official() / "parity.pt", weights_only=True)


# 48 KiB: blocks of about 64 x 64 positions (single-row pieces), far below any real budget.
@pytest.mark.parametrize("budget", [None, 48 << 10])
def test_outputs_match_the_original(official: Path, parity: dict, budget: int | None) -> None:
    model, _ = load(official / "state_dict.pt")
    x, expected = parity["inputs"], parity["outputs"]
    with torch.inference_mode():
        out = model(x["lr"], x["lrsr"], x["ref"], x["refsr"], search_budget=budget)
    assert torch.equal(out.hard_index, expected["hard_index"])
    assert (out.sr - expected["sr"]).abs().max() <= 1e-4
    assert (out.S - expected["S"]).abs().max() <= 1e-5
    for level in ("T_lv3", "T_lv2", "T_lv1"):
        assert (getattr(out, level) - expected[level]).abs().max() <= 1e-5, level


def official_uint8(image: torch.Tensor) -> np.ndarray:
    """A [-1, 1] NCHW tensor as the original code saves it: ``((x + 1) * 127.5).round()``
    cast to uint8 (``trainer.py``, ``test``), written out here rather than borrowed from
    the code under test."""
    levels = ((image[0] + 1.0) * 127.5).round().permute(1, 2, 0).numpy()
    return levels.astype(np.uint8)


def test_cli_reproduces_the_original_uint8_output(
    official: Path, parity: dict, tmp_path: Path
) -> None:
    x = parity["inputs"]
    Image.fromarray(official_uint8(x["lr"])).save(tmp_path / "lr.png")
    Image.fromarray(official_uint8(x["ref"])).save(tmp_path / "ref.png")
    result = run_cli(
        "upscale",
        tmp_path / "lr.png",
        "--ref",
        tmp_path / "ref.png",
        "--weights",
        official / "state_dict.pt",
        "-o",
        tmp_path / "sr.png",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    got = np.asarray(Image.open(tmp_path / "sr.png")).astype(int)
    want = official_uint8(parity["outputs"]["sr"]).astype(int)
    assert got.shape == want.shape == (96, 128, 3)
    # Measured: every value equal (the float outputs agree within 1e-4 of a [-1, 1] range).
    assert np.array_equal(got, want)
