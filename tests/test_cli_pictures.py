"""``ttsr upscale`` with tiles, a final scale and pictures, as a user runs it."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli, sample_image, save_png
from ttsr_cli.imageio import ImageData
from ttsr_cli.run.ttsr import TTSRRunner


def upscale(lr: Path, weights: Path, out: Path, *options: str | Path):
    result = run_cli("upscale", lr, "--weights", weights, "-o", out, "--device", "cpu", *options)
    assert result.returncode == 0, result.stderr
    return result


def test_tiled_output_matches_untiled(tiny_weights: Path, tmp_path: Path) -> None:
    lr = save_png(tmp_path / "photo.png", sample_image("astronaut", (100, 76)))
    ref = save_png(tmp_path / "ref.png", sample_image("coffee", (160, 120)))
    upscale(lr, tiny_weights, tmp_path / "whole.png", "--ref", ref)
    forced = upscale(lr, tiny_weights, tmp_path / "tiled.png", "--ref", ref, "--tile", "40", "-v")
    assert "(6 tiles)" in forced.stderr
    whole = np.asarray(Image.open(tmp_path / "whole.png"))
    tiled = np.asarray(Image.open(tmp_path / "tiled.png"))
    assert np.array_equal(tiled, whole)


def test_a_small_memory_budget_tiles(tiny_weights: Path, tmp_path: Path) -> None:
    lr = save_png(tmp_path / "photo.png", sample_image("astronaut", (80, 60)))
    result = upscale(lr, tiny_weights, tmp_path / "sr.png", "--max-memory", "3MB", "--verbose")
    assert re.search(r"\((\d+) tiles\)", result.stderr), result.stderr
    assert Image.open(tmp_path / "sr.png").size == (320, 240)


@pytest.mark.parametrize(
    ("scale", "size"), [(2, (74, 58)), (3, (111, 87)), (8, (296, 232)), (1.5, (56, 44))]
)
def test_outscale_sizes_with_alpha_and_sixteen_bits(tiny_model, scale: float, size) -> None:
    rgb = sample_image("astronaut", (37, 29)).astype(np.uint16) * 257
    alpha = np.full((29, 37), 30000, np.uint16)
    upscaler = TTSRRunner(tiny_model, torch.device("cpu"))
    out, _ = upscaler.upscale_image(ImageData(rgb, alpha, 16), outscale=scale)
    assert out.size == size and out.rgb.dtype == np.uint16
    assert out.alpha.shape == size[::-1]


def test_outscale_on_the_command_line(tiny_weights: Path, tmp_path: Path) -> None:
    rgba = np.dstack([sample_image("astronaut", (37, 29)), np.full((29, 37), 200, np.uint8)])
    lr = save_png(tmp_path / "photo.png", rgba)
    upscale(lr, tiny_weights, tmp_path / "sr.png", "--outscale", "1.5")
    with Image.open(tmp_path / "sr.png") as out:
        assert out.size == (56, 44) and out.mode == "RGBA"


def test_attention_maps_and_compare_sheet(tiny_weights: Path, tmp_path: Path) -> None:
    lr = save_png(tmp_path / "photo.png", sample_image("astronaut", (40, 30)))
    refs = [
        save_png(tmp_path / "a.png", sample_image("coffee", (64, 48))),
        save_png(tmp_path / "b.png", sample_image("chelsea", (48, 40))),
    ]
    maps = tmp_path / "maps"
    options = ("--ref", refs[0], "--ref", refs[1], "--outscale", "2", "--tile", "16")
    upscale(
        lr,
        tiny_weights,
        tmp_path / "out" / "sr.png",
        *options,
        "--save-attention",
        maps,
        "--compare",
    )
    for name in ("sr_attention.png", "sr_source.png"):
        with Image.open(maps / name) as picture:
            assert picture.size == (80, 60) and picture.mode == "RGB"
    with Image.open(tmp_path / "out" / "sr_compare.png") as sheet:
        assert sheet.width >= 2 * 160 and sheet.height > 120
    sheet = np.asarray(Image.open(tmp_path / "out" / "sr_compare.png"))
    assert sheet[20:, 164:324].std() > 0  # the ttsr panel is a picture, not blank


def test_compare_without_a_reference_uses_the_image_itself(tiny_weights, tmp_path) -> None:
    """Sheets are named after the output: a second run to another output keeps the first's."""
    lr = save_png(tmp_path / "photo.png", sample_image("astronaut", (32, 24)))
    upscale(lr, tiny_weights, tmp_path / "sr.png", "--compare")
    first = (tmp_path / "sr_compare.png").read_bytes()
    upscale(lr, tiny_weights, tmp_path / "sr2.png", "--compare", "--outscale", "2")
    assert (tmp_path / "sr_compare.png").read_bytes() == first
    assert (tmp_path / "sr2_compare.png").is_file()
