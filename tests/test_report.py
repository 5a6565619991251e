"""``ttsr evaluate --report DIR``: chart, best/worst crops and an HTML page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run_cli, sample_image, save_png
from ttsr_cli.report import textured_window


def test_report_with_a_model_and_baseline_only(tiny_weights: Path, tmp_path: Path) -> None:
    data = tmp_path / "hr"
    data.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        save_png(data / f"{name}.png", sample_image(name, (120, 96)))
    for weights, panels in ((("-w", tiny_weights), 3), (("-m", "bicubic"), 2)):
        out = tmp_path / f"report{panels}"
        result = run_cli(
            "evaluate", "--dataset", "mine", "--data-dir", data, *weights, "--report", out, "--json"
        )
        assert result.returncode == 0, result.stderr
        assert sorted(p.name for p in out.iterdir()) == [
            "best.png",
            "index.html",
            "report.png",
            "worst.png",
        ]
        page = (out / "index.html").read_text()
        assert all(name in page for name in ("astronaut.png", "coffee.png", "chelsea.png"))
        chart = Image.open(out / "report.png")
        assert chart.height >= 3 * 14
        best = Image.open(out / "best.png")
        assert best.width == panels * (2 * 96 + 4)  # bicubic | (ttsr |) ground truth, at 2x


def test_crop_goes_where_the_texture_is() -> None:
    image = np.full((200, 300, 3), 128, np.uint8)
    image[120:180, 200:260] = np.random.default_rng(0).integers(0, 255, (60, 60, 3))
    y, x = textured_window(image, 64)
    assert 100 <= y <= 130 and 180 <= x <= 210
