"""``ttsr restore`` and ``ttsr convert`` as a user runs them, with the RL-Restore authors'
weights (``../shared/fixtures/rl-restore-official``) or a random toolbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import require_rl_fixture, run_cli, sample_image, save_png
from ttsr_cli import archs, run
from ttsr_cli.archs.rlrestore import RLRestore, RLRestoreConfig
from ttsr_cli.archs.rlrestore.load import from_tensorflow
from ttsr_cli.degrade import degrade_u8
from ttsr_cli.errors import TTSRError
from ttsr_cli.metrics import psnr_rgb
from ttsr_cli.registry import load_registry
from ttsr_cli.weights import load as load_weights
from ttsr_cli.weights import save_safetensors


@pytest.fixture(scope="module")
def authors_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The authors' variables (as TensorFlow's reader gives them) in our format."""
    variables = dict(np.load(require_rl_fixture() / "weights.npz"))
    model, _ = archs.load(from_tensorflow(variables))
    path = tmp_path_factory.mktemp("rl") / "authors.safetensors"
    save_safetensors(model, path)
    return path


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random two-tool toolbox: fast, and the chain still runs every code path."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rl") / "small.safetensors"
    save_safetensors(RLRestore(RLRestoreConfig(tools=("3-layer", "8-layer"))), path)
    return path


def test_the_whole_image_path_gives_the_authors_chain_and_pixels(
    authors_weights: Path, tmp_path: Path
) -> None:
    parity = np.load(require_rl_fixture() / "parity.npz")
    source = save_png(tmp_path / "mine.png", parity["whole_input_u8"])
    out = tmp_path / "out.png"
    steps = tmp_path / "steps"
    result = run_cli(
        "restore", source, "-w", authors_weights, "-o", out, "--json", "--save-steps", steps
    )
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)["results"]
    assert record["tools"] == [2, 12]  # 3:3 tie at step 2 goes to tool 12, not stop
    assert record["votes"] == parity["whole_votes"].tolist()
    off = np.abs(np.asarray(Image.open(out)).astype(np.int16) - parity["whole_final_u8"])
    assert off.max() <= 1 and (off > 0).mean() <= 1e-4
    assert sorted(p.name for p in steps.iterdir()) == [
        "out_step1_tool02.png",
        "out_step2_tool12.png",
    ]
    first = np.asarray(Image.open(steps / "out_step1_tool02.png")).astype(np.int16)
    assert np.abs(first - parity["whole_step1_u8"]).max() <= 1


def test_depth_and_alpha_are_kept_and_a_batch_goes_on(small_weights: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rgb = sample_image("coffee", (90, 70))
    alpha = np.linspace(0, 255, 90 * 70).reshape(70, 90).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(photos / "rgba.png")
    deep = (rgb.astype(np.uint16) * 257)[..., ::-1].copy()
    cv2.imwrite(str(photos / "deep.png"), deep)  # OpenCV writes 16-bit colour PNGs
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "out"
    result = run_cli("restore", photos, "-w", small_weights, "-o", out, "--json", "--compare")
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["ok"], summary["failed"]) == (2, 1)
    assert "broken.png" in result.stderr and "Traceback" not in result.stderr
    with Image.open(out / "rgba_restored.png") as image:
        assert image.mode == "RGBA" and image.size == (90, 70)
        assert np.array_equal(np.asarray(image)[..., 3], alpha)
    assert cv2.imread(str(out / "deep_restored.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert (out / "rgba_restored_compare.png").is_file()


def test_max_steps_caps_the_chain(authors_weights: Path, tmp_path: Path) -> None:
    parity = np.load(require_rl_fixture() / "parity.npz")
    source = save_png(tmp_path / "mine.png", parity["whole_input_u8"])
    result = run_cli("restore", source, "-w", authors_weights, "--max-steps", "1", "--json")
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)["results"]
    assert record["tools"] == [2] and len(record["votes"]) == 1
    assert Path(record["output"]).name == "mine_restored.png"


def test_models_of_the_wrong_kind_are_refused_in_one_line(
    small_weights: Path, tiny_weights: Path, tmp_path: Path
) -> None:
    photo = save_png(tmp_path / "photo.png", sample_image("coffee", (64, 64)))
    for args, expected in (
        (("restore", photo, "-w", tiny_weights), "where a RL-Restore"),
        (("upscale", photo, "-w", small_weights), "use ttsr restore"),
    ):
        result = run_cli(*args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "photo_restored.png").exists()


def run_offline(*args: str | Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``ttsr ARGS`` with the Hub unreachable and an empty cache, as on a machine offline."""
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), **env}
    return subprocess.run(
        [sys.executable, "-m", "ttsr_cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **offline},
    )


@pytest.mark.skipif(
    not load_registry().default_restore, reason="no restoration model is bundled yet (issue 15)"
)
def test_a_plain_restore_uses_the_bundled_model_offline_and_restores(tmp_path: Path) -> None:
    """``ttsr restore photo -o out`` names no model and reaches no network: the registry's
    bundled ``rl-restore`` undoes a good part of the paper's moderate damage."""
    clean = sample_image("coffee", (160, 120))
    damaged, _ = degrade_u8(clean, "moderate", seed=3, index=0)
    photo = save_png(tmp_path / "photo.png", damaged)
    result = run_offline("restore", photo, "-o", tmp_path / "out.png", "--json", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)["results"]
    assert 1 <= len(record["tools"]) <= 3
    restored = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    assert psnr_rgb(restored, clean) > psnr_rgb(damaged, clean) + 1.0


def test_a_registry_without_a_restoration_default_says_so(tmp_path: Path) -> None:
    registry = tmp_path / "registry.toml"
    registry.write_text('default = "ttsr"\n', encoding="utf-8")
    photo = save_png(tmp_path / "photo.png", sample_image("coffee", (64, 64)))
    result = run_offline("restore", photo, tmp_path=tmp_path, TTSR_REGISTRY=str(registry))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no default restoration model" in lines[0], result.stderr
    assert not (tmp_path / "photo_restored.png").exists()


def copy_tensorflow_folder(tmp_path: Path) -> Path:
    """A writable copy of the authors' ``toolbox/`` and ``models/``."""
    source = require_rl_fixture() / "tf"
    target = tmp_path / "RL-Restore"
    for sub in ("toolbox", "models"):
        (target / sub).mkdir(parents=True)
        for path in (source / sub).iterdir():
            (target / sub / path.name).write_bytes(path.read_bytes())
    return target


def test_convert_reads_the_authors_tensorflow_folder_without_tensorflow(
    authors_weights: Path, tmp_path: Path
) -> None:
    out = tmp_path / "converted.safetensors"
    folder = copy_tensorflow_folder(tmp_path)
    result = run_cli("convert", folder, "-o", out, "--json")
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout)
    assert written["family"] == "rl-restore" and written["parameters"] == 523_931
    ours, theirs = load_file(out), load_file(authors_weights)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)
    with safe_open(str(out), framework="pt") as fh:
        assert json.loads(fh.metadata()["config"])["tools"][2] == "8-layer"
    # and any checkpoint ttsr loads is re-saved as it is
    again = tmp_path / "again.safetensors"
    assert run_cli("convert", out, "-o", again).returncode == 0
    assert load_file(again).keys() == ours.keys()


def test_bad_checkpoints_give_one_line_and_write_nothing(tmp_path: Path) -> None:
    folder = copy_tensorflow_folder(tmp_path)
    truncated = copy_tensorflow_folder(tmp_path / "t")
    data = truncated / "toolbox" / "tool07.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:5000])
    no_agent = copy_tensorflow_folder(tmp_path / "n")
    for path in (no_agent / "models").iterdir():
        path.unlink()
    (no_agent / "models").rmdir()
    other = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(4, 3, 3, 3)}, other)
    cut = tmp_path / "cut.safetensors"
    save_safetensors(RLRestore(RLRestoreConfig(tools=("3-layer",))), cut)
    cut.write_bytes(cut.read_bytes()[:3000])
    cases = {
        truncated: "tool07.data-00000-of-00001",
        no_agent: "no models/",
        other: "not a checkpoint of a known network",
        cut: "truncated",
    }
    for source, expected in cases.items():  # the loader every command shares, in-process
        with pytest.raises(TTSRError) as caught:
            load_weights(source)
        assert "\n" not in str(caught.value) and expected in str(caught.value)
    photo = save_png(tmp_path / "photo.png", sample_image("coffee", (64, 64)))
    for args in (
        ("convert", truncated, "-o", tmp_path / "out.safetensors"),
        ("restore", photo, "-w", other),
    ):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, result.stderr)
    assert not (tmp_path / "out.safetensors").exists()
    assert not (tmp_path / "photo_restored.png").exists()
    assert run_cli("convert", folder, "-o", tmp_path / "out.pt").returncode == 2


@pytest.fixture
def crops(tmp_path: Path) -> Path:
    """Two real photos small enough to evaluate in a second."""
    folder = tmp_path / "crops"
    folder.mkdir()
    save_png(folder / "coffee.png", sample_image("coffee", (120, 96)))
    save_png(folder / "astronaut.png", sample_image("astronaut", (96, 96)))
    return folder


def evaluate_json(*args: str | Path) -> dict:
    result = run_cli("evaluate", "--dataset", "crops", *args, "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_evaluate_degrade_scores_restoration_beside_the_damaged_input(
    authors_weights: Path, crops: Path
) -> None:
    args = ("--data-dir", crops, "--degrade", "moderate", "-w", authors_weights)
    report = crops.parent / "report"
    first = evaluate_json(*args, "--protocol", "rgb", "--report", report)
    assert first["baseline"] == "input" and first["degrade"] == {"level": "moderate", "seed": 0}
    assert first["psnr"] > first["input_psnr"] + 0.5  # the authors' toolchain restores
    assert "input PSNR" in (report / "index.html").read_text()
    # the report's crops are the scored ones: the damaged input, not the clean photo
    sheet = np.asarray(Image.open(report / "best.png"))
    assert sheet.shape[1] > 3 * sheet.shape[0] - 64  # input | restored | ground truth
    again = evaluate_json(*args, "--protocol", "rgb", "--seed", "1")
    assert again["input_psnr"] != first["input_psnr"]  # another seed, other damage
    undamaged = run_cli(
        "evaluate", "--dataset", "crops", "--data-dir", crops, "-w", authors_weights
    )
    assert undamaged.returncode == 2 and "add --degrade" in undamaged.stderr


def test_restoration_before_super_resolution(
    authors_weights: Path, tiny_weights: Path, crops: Path, tmp_path: Path
) -> None:
    scored = evaluate_json(
        "--data-dir", crops, "--degrade", "severe", "-w", tiny_weights, "--restore", authors_weights
    )
    assert scored["baseline"] == "bicubic" and len(scored["per_image"]) == 2
    photo = crops / "coffee.png"
    out = tmp_path / "x4.png"
    result = run_cli(
        "upscale", photo, "-w", tiny_weights, "--restore", authors_weights, "-o", out, "--json"
    )
    assert result.returncode == 0, result.stderr
    [record] = json.loads(result.stdout)["results"]
    assert record["restore_tools"] and all(1 <= t <= 12 for t in record["restore_tools"])
    assert Image.open(out).size == (480, 384)
    with pytest.raises(TTSRError, match="needs --restore"):
        run.with_restoration(
            run.load_runner(None, str(tiny_weights), run.settings("cpu")),
            "none",
            True,
            run.settings("cpu"),
        )
