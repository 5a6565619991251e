"""``ttsr match-ref``: the true reference ranks first, and every output is usable as documented.

The CLI is run in real subprocesses on a small generated pool: the input is the LR of a crop
of one photo, the true reference an overlapping, shifted crop of the same photo, and the
distractors are other photos.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, sample_image, save_png
from ttsr_cli.batch import read_ref_map
from ttsr_cli.matching import Match, Matcher, Ranking, fit_positions, write_ref_map

DISTRACTORS = ("coffee", "chelsea", "rocket", "immunohistochemistry")


def _lr(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``input.png`` (LR of an astronaut crop), ``pool/`` with the true reference (an
    overlapping crop shifted by 40 px) and photos of other scenes."""
    root = tmp_path_factory.mktemp("scene")
    photo = sample_image("astronaut", (320, 320))
    save_png(root / "input.png", _lr(photo[40:200, 40:200], 40))
    pool = root / "pool"
    pool.mkdir()
    save_png(pool / "true.png", photo[80:240, 80:240])
    for name in DISTRACTORS:
        save_png(pool / f"{name}.png", sample_image(name, (160, 160)))
    return root


def test_overlapping_crop_ranks_first(scene: Path) -> None:
    matcher = Matcher()
    query = matcher.encode_input(np.asarray(Image.open(scene / "input.png")))
    pool = [
        (p, matcher.encode_reference(np.asarray(Image.open(p)))) for p in (scene / "pool").iterdir()
    ]
    ranking = matcher.rank(query, pool, top=len(pool))  # top > candidates: all scored exactly
    assert ranking[0].ref.name == "true.png"
    assert ranking[0].score > ranking[1].score
    assert len(ranking) == len(pool) and all(-1 <= m.score <= 1 for m in ranking)


def test_images_are_shrunk_to_the_position_cap() -> None:
    image = np.zeros((400, 300, 3), np.uint8)
    assert fit_positions(image, 100 * 100, 4) is image  # 100x75 lv3 positions: fits
    small = fit_positions(image, 50 * 50, 4)
    assert (small.shape[0] // 4) * (small.shape[1] // 4) <= 50 * 50


def test_ref_map_paths_resolve_as_upscale_reads_them(tmp_path: Path) -> None:
    rankings = [Ranking(tmp_path / "a.png", (Match(tmp_path / "r" / "x.png", 0.9),))]
    target = tmp_path / "maps" / "refs.csv"
    write_ref_map(rankings, target)
    assert read_ref_map(target) == {
        (tmp_path / "a.png").resolve(): ((tmp_path / "r/x.png").resolve(),)
    }


def test_cli_outputs_and_a_bad_pool_image(scene: Path, tmp_path: Path) -> None:
    (scene / "pool" / "broken.png").write_text("not an image")
    try:
        out = tmp_path / "out"
        result = run_cli(
            "match-ref",
            scene / "input.png",
            "--pool", scene / "pool",
            "--top", "2",
            "--json",
            "--csv", out / "refs.csv",
            "--copy-to", out / "copies",
            "--sheet", out / "sheet.png",
        )  # fmt: skip
    finally:
        (scene / "pool" / "broken.png").unlink()
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "broken.png" in result.stderr
    assert "Traceback" not in result.stderr
    [entry] = json.loads(result.stdout)["results"]
    assert entry["ranking"][0]["ref"].endswith("true.png")
    assert len(entry["ranking"]) == 2
    scores = [r["score"] for r in entry["ranking"]]
    assert scores == sorted(scores, reverse=True)
    rows = list(csv.reader((out / "refs.csv").open()))
    assert rows[0] == ["input", "ref1", "ref2"] and rows[1][1].endswith("true.png")
    copies = sorted(p.name for p in (out / "copies" / "input").iterdir())
    assert copies[0] == "01_true.png" and len(copies) == 2
    with Image.open(out / "sheet.png") as sheet:
        assert sheet.width > sheet.height > 0


def test_ref_map_from_match_ref_drives_upscale(
    scene: Path, tmp_path: Path, tiny_weights: Path
) -> None:
    refs = tmp_path / "refs.csv"
    matched = run_cli(
        "match-ref", scene / "input.png", "--pool", scene / "pool", "--top", "1", "--csv", refs,
        "--weights", tiny_weights,
    )  # fmt: skip
    assert matched.returncode == 0, matched.stderr
    out = tmp_path / "up.png"
    upscaled = run_cli(
        "upscale", scene / "input.png", "--ref-map", refs, "--weights", tiny_weights, "-o", out,
        "--json",
    )  # fmt: skip
    assert upscaled.returncode == 0, upscaled.stderr
    [result] = json.loads(upscaled.stdout)["results"]
    assert result["references"] == [str((scene / "pool" / "true.png").resolve())]
    with Image.open(out) as image:
        assert image.size == (160, 160)


@pytest.mark.parametrize(
    ("args", "message"),
    [(("--pool", "missing"), "not a folder"), (("--pool", ".", "--top", "0"), "--top")],
)
def test_configuration_errors_exit_2(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run_cli("match-ref", "x.png", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
