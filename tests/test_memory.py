"""``--max-memory`` holds for the whole process, measured as a user's system sees it."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import BUNDLED, run_cli_peak, sample_image, save_png

BUDGET = 200 << 20


def test_a_tiled_upscale_stays_within_its_budget(tmp_path: Path) -> None:
    """Peak RSS of a tiled upscale, less that of the same command on a tiny image (imports,
    model, the reference's features: the fixed overhead), stays within ``--max-memory``.

    Measured (bundled model, 200x150 LR, 200x150 reference, 200 MB): 133 MB over the tiny
    run, in 35 tiles; untiled the same image takes 666 MB over it, and with the per-pixel
    costs before they had a floor for narrow models (12 tiles), 254 MB."""
    ref = save_png(tmp_path / "ref.png", sample_image("coffee", (200, 150)))
    small = save_png(tmp_path / "small.png", sample_image("astronaut", (24, 24)))
    large = save_png(tmp_path / "large.png", sample_image("astronaut", (200, 150)))
    common = ("--ref", ref, "--weights", BUNDLED, "--device", "cpu", "--max-memory", "200MB")
    base, base_peak = run_cli_peak("upscale", small, "-o", tmp_path / "s.png", *common)
    assert base.returncode == 0, base.stderr
    tiled, peak = run_cli_peak("upscale", large, "-o", tmp_path / "l.png", "-v", *common)
    assert tiled.returncode == 0, tiled.stderr
    tiles = re.search(r"\((\d+) tiles\)", tiled.stderr)
    assert tiles and int(tiles.group(1)) > 1, tiled.stderr
    over = peak - base_peak
    assert over <= BUDGET, f"{over / 2**20:.0f} MB over the fixed overhead"
