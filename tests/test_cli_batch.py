"""``ttsr upscale`` on many files as a user runs it: one bad file never stops the others.

The bad-input corpus is upscaled in a single real CLI run (module fixture); each kind's
expected outcome is stated in the parametrization below and checked against that run.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY, run_cli, sample_image, save_png
from ttsr_cli.archs.ttsr import TTSR
from ttsr_cli.weights import save_safetensors


def _photo(size: tuple[int, int] = (20, 15)) -> np.ndarray:
    return sample_image("astronaut", size)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims ``width x height`` but holds no pixels: Pillow refuses it from the
    header, so no memory is ever allocated for it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def _truncated(path: Path, fmt: str) -> None:
    Image.fromarray(_photo((64, 48))).save(path, format=fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


MAKERS: dict[str, Callable[[Path], None]] = {
    "empty.png": lambda p: p.write_bytes(b""),
    "truncated.png": lambda p: _truncated(p, "PNG"),
    "truncated.jpg": lambda p: _truncated(p, "JPEG"),
    "text.png": lambda p: p.write_text("just some text\n"),
    "folder.png": lambda p: p.mkdir(),
    "dangling.png": lambda p: p.symlink_to(p.with_name("gone.png")),
    "bomb.png": lambda p: _png_header_only(p, 100_000, 100_000),
    "good.png": lambda p: save_png(p, _photo()),
    "good.jpg": lambda p: Image.fromarray(_photo((17, 13))).save(p, quality=90),
    "tiny.png": lambda p: save_png(p, _photo((1, 1))),
    "cmyk.jpg": lambda p: Image.fromarray(_photo()).convert("CMYK").save(p),
    "palette.png": lambda p: Image.fromarray(_photo()).quantize(16).save(p),
    "deep.png": lambda p: cv2.imwrite(str(p), _photo()[..., ::-1].astype(np.uint16) * 257 + 50),
    "grey16.png": lambda p: Image.fromarray(_photo()[..., 0].astype(np.uint16) * 200).save(p),
    "la.png": lambda p: Image.fromarray(np.dstack([_photo()[..., 0], _photo()[..., 1]])).save(p),
}

# kind -> (status, error fragment or the output's (mode, size))
EXPECTED = [
    ("empty.png", "error", "not an image"),
    ("truncated.png", "error", "damaged or truncated"),
    ("truncated.jpg", "error", "damaged or truncated"),
    ("text.png", "error", "not an image"),
    ("folder.png", "error", "is a directory"),
    ("dangling.png", "error", "dangling symbolic link"),
    ("bomb.png", "error", "too large to decode safely"),
    ("good.png", "ok", ("RGB", (80, 60))),
    ("good.jpg", "ok", ("RGB", (68, 52))),
    ("tiny.png", "ok", ("RGB", (4, 4))),
    ("cmyk.jpg", "ok", ("RGB", (80, 60))),
    ("palette.png", "ok", ("RGB", (80, 60))),
    ("deep.png", "ok", ("RGB;16", (80, 60))),
    ("grey16.png", "ok", ("I;16", (80, 60))),
    ("la.png", "ok", ("LA", (80, 60))),
]


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_safetensors(TTSR(TINY).eval(), path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, weights: Path) -> dict:
    """Every kind in one folder, upscaled by one CLI call through a glob into out/."""
    root = tmp_path_factory.mktemp("corpus")
    for name, make in MAKERS.items():
        make(root / name)
    out = root / "out"
    result = run_cli(
        "upscale", root / "*.*", "-w", weights, "-o", out, "--format", "same", "--json"
    )
    report = json.loads(result.stdout)
    return {"root": root, "out": out, "result": result, "report": report}


def test_the_batch_reports_every_input_once(corpus: dict) -> None:
    result, report = corpus["result"], corpus["report"]
    failed = [kind for kind, status, _ in EXPECTED if status == "error"]
    assert result.returncode == 1, result.stderr
    assert (report["ok"], report["failed"]) == (len(EXPECTED) - len(failed), len(failed))
    assert sorted(Path(r["input"]).name for r in report["results"]) == sorted(MAKERS)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert sorted(Path(line.split(": ")[1]).name for line in errors) == sorted(failed)
    assert "Traceback" not in result.stderr
    assert not [p for p in corpus["out"].iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize(("kind", "status", "expected"), EXPECTED)
def test_each_kind_of_input(corpus: dict, kind: str, status: str, expected) -> None:
    record = next(r for r in corpus["report"]["results"] if Path(r["input"]).name == kind)
    assert record["status"] == status, record
    if status == "error":
        assert expected in record["error"]
        assert record["output"] is None
        assert f"error: {corpus['root'] / kind}: " in corpus["result"].stderr
        return
    output = Path(record["output"])
    assert output.parent == corpus["out"] and output.stem == Path(kind).stem + "_ttsr"
    assert output.suffix == Path(kind).suffix  # --format same
    mode, size = expected
    with Image.open(output) as img:
        img.load()  # complete, not truncated
        assert img.size == size
        if mode == "RGB;16":
            deep = cv2.imread(str(output), cv2.IMREAD_UNCHANGED)
            assert deep.dtype == np.uint16 and deep.shape == (size[1], size[0], 3)
        else:
            assert img.mode == mode


def test_a_reference_smaller_than_a_patch_stops_before_any_work(
    weights: Path, tmp_path: Path
) -> None:
    photo = save_png(tmp_path / "photo.png", _photo())
    small = save_png(tmp_path / "small.png", _photo((3, 3)))
    result = run_cli("upscale", photo, "--ref", small, "-w", weights, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: reference ")
    assert "at least 4x4" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_references_by_folder_and_map_then_skip_existing_and_shards(
    weights: Path, tmp_path: Path
) -> None:
    photos, refs = tmp_path / "photos", tmp_path / "refs"
    photos.mkdir()
    refs.mkdir()
    for name, size in (("a", (16, 12)), ("b", (12, 16)), ("c", (14, 14))):
        save_png(photos / f"{name}.png", _photo(size))
        save_png(refs / f"{name}.png", sample_image("coffee", (40, 32)))
    (tmp_path / "map.csv").write_text("photos/c.png,refs/a.png,refs/b.png\n")
    args = ("upscale", photos, "--ref-dir", refs, "--ref-map", tmp_path / "map.csv", "-w")
    out = tmp_path / "out"
    first = run_cli(*args, weights, "-o", out, "--format", "jpg", "--json", "--precision", "bf16")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert (report["ok"], report["failed"]) == (3, 0)
    assert sorted(p.name for p in out.iterdir()) == ["a_ttsr.jpg", "b_ttsr.jpg", "c_ttsr.jpg"]
    used = {
        Path(r["input"]).name: [
            str(Path(ref).relative_to(tmp_path.resolve())) for ref in r["references"]
        ]
        for r in report["results"]
    }
    # c is in the map, which wins over the folder; a and b find their namesakes in --ref-dir.
    assert used == {
        "a.png": ["refs/a.png"],
        "b.png": ["refs/b.png"],
        "c.png": ["refs/a.png", "refs/b.png"],
    }
    assert Image.open(out / "b_ttsr.jpg").size == (48, 64)

    (out / "a_ttsr.jpg").unlink()
    again = run_cli(*args, weights, "-o", out, "--format", "jpg", "--skip-existing", "--json")
    again_report = json.loads(again.stdout)
    assert again.returncode == 0, again.stderr
    statuses = {Path(r["input"]).name: r["status"] for r in again_report["results"]}
    assert statuses == {"a.png": "ok", "b.png": "skipped", "c.png": "skipped"}

    shard = run_cli(*args, weights, "-o", tmp_path / "s2", "--shard", "2/2", "--quiet")
    assert shard.returncode == 0 and shard.stderr == ""
    assert [p.name for p in (tmp_path / "s2").iterdir()] == ["b_ttsr.png"]
