"""SFT-GAN within a memory budget: the generator's tiles give the untiled pixels, the
segmentation's tiles start on its 8-pixel grid and stay close to the untiled probabilities,
and ``--max-memory`` reaches both through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli, sample_image, save_png
from ttsr_cli import archs
from ttsr_cli.archs.sftgan import OutdoorSceneSeg
from ttsr_cli.run.common import Progress
from ttsr_cli.run.sftgan import SFTGANRunner
from ttsr_cli.tiles import plan_aligned

CONFIG = {"num_blocks": 2, "channels": 16, "cond_channels": 8, "cond_hidden": 16}


@pytest.fixture(scope="module")
def generator() -> tuple[torch.nn.Module, archs.Descriptor]:
    torch.manual_seed(0)
    return archs.family("sftgan").create(CONFIG)


def one_hot_priors(height: int, width: int) -> np.ndarray:
    """Blocky class maps, so that tiles cut through class borders."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 8, size=(-(-height // 16), -(-width // 16)))
    labels = np.kron(blocks, np.ones((16, 16), dtype=np.int64))[:height, :width]
    return np.eye(8, dtype=np.float32)[labels].transpose(2, 0, 1).copy()


@pytest.mark.parametrize(
    ("height", "width", "pixels", "overlap"), [(200, 152, 4096, 64), (96, 40, 999, 10)]
)
def test_aligned_tiles_start_on_the_grid_and_cover_the_image(
    height: int, width: int, pixels: int, overlap: int
) -> None:
    tiles = plan_aligned(height, width, pixels, overlap, 8)
    assert len(tiles) > 1
    covered = np.zeros((height, width), dtype=np.int64)
    for tile in tiles:
        for span, length in ((tile.y, height), (tile.x, width)):
            assert span.core0 % 8 == 0 and span.read0 % 8 == 0
            assert span.read1 % 8 == 0 or span.read1 == length
            assert span.read0 == 0 or span.core0 - span.read0 >= overlap
            assert span.read1 == length or span.read1 - span.core1 >= overlap
        covered[tile.core] += 1
    assert (covered == 1).all()


def test_generator_tiles_give_the_untiled_pixels(generator: tuple, tmp_path: Path) -> None:
    model, descriptor = generator
    lr = sample_image("coffee", (60, 44))
    priors = one_hot_priors(176, 240)
    whole = SFTGANRunner(model, descriptor, None, torch.device("cpu"))
    tiled = SFTGANRunner(model, descriptor, None, torch.device("cpu"), tile=16)
    a, b = whole.upscale_detailed(lr, priors), tiled.upscale_detailed(lr, priors)
    assert (a.tiles, b.tiles) == (1, 12)
    assert np.array_equal(a.sr, b.sr)


def test_segmentation_tiles_are_stitched_on_its_grid() -> None:
    """Random ResNet-101 weights (the published ones are not here), a small image and a small
    margin: each tile's core lands where it belongs (the probabilities stay within 1e-3 of the
    whole image's; random weights leave many near-ties, so a few arg-maxes flip).  The
    default margin's cost on real photos is ``bench_sftgan.py``'s."""
    torch.manual_seed(0)
    segmentation = OutdoorSceneSeg().eval()
    model, descriptor = archs.family("sftgan").create(CONFIG)
    rgb = sample_image("coffee", (48, 32)).astype(np.float64) / 255
    cpu = torch.device("cpu")
    runner = SFTGANRunner(model, descriptor, segmentation, cpu, tile=16, seg_margin=32)
    tiles = runner.segmentation_tiles(128, 192)
    assert len(tiles) > 1 and all(t.y.read0 % 8 == 0 and t.x.read0 % 8 == 0 for t in tiles)
    with torch.inference_mode():
        exact = runner.priors(rgb, plan_aligned(128, 192, 10**9, 0, 8), Progress(cpu, None, 1))
        tiled = runner.priors(rgb, tiles, Progress(cpu, None, len(tiles)))
    difference = (exact - tiled).abs()
    assert float(difference.max()) < 1e-3  # 2.1e-4 measured
    assert float((exact.argmax(1) != tiled.argmax(1)).float().mean()) < 0.01  # near-ties flip


def test_max_memory_tiles_through_the_command_line(generator: tuple, tmp_path: Path) -> None:
    """A budget too small for the whole generator pass: tiles, and the same 8-bit image."""
    model, _ = generator
    weights = tmp_path / "generator.pth"
    torch.save(model.state_dict(), weights)
    photo = save_png(tmp_path / "photo.png", sample_image("coffee", (60, 44)))
    np.save(tmp_path / "maps.npy", one_hot_priors(176, 240))
    outputs = {}
    for budget in ("4GB", "4MB"):
        out = tmp_path / f"{budget}.png"
        args = ("-w", weights, "--seg-maps", tmp_path / "maps.npy", "--max-memory", budget)
        result = run_cli("upscale", photo, *args, "-o", out, "--json")
        assert result.returncode == 0, result.stderr
        outputs[budget] = (json.loads(result.stdout)["results"][0]["tiles"], out.read_bytes())
    assert outputs["4GB"][0] == 1 and outputs["4MB"][0] > 1
    assert outputs["4GB"][1] == outputs["4MB"][1]


def test_a_budget_below_the_smallest_tiles_is_used_with_a_warning(generator: tuple) -> None:
    model, descriptor = generator
    lr, priors = sample_image("coffee", (60, 44)), one_hot_priors(176, 240)
    cpu = torch.device("cpu")
    tight = SFTGANRunner(model, descriptor, None, cpu, memory_budget=4 << 20)
    result = tight.upscale_detailed(lr, priors)
    assert result.tiles > 1 and len(result.warnings) == 1
    assert "memory budget is too small" in result.warnings[0]
    roomy = SFTGANRunner(model, descriptor, None, cpu, memory_budget=1 << 30)
    assert not roomy.upscale_detailed(lr, priors).warnings
