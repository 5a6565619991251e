"""The example scripts as the examples README runs them: ``batch.sh`` with the bundled model,
``train_csnln_lite.sh`` in pieces (tiny settings through its pass-through options)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from conftest import ROOT, sample_image, save_png


def _script(name: str, *args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``examples/NAME ARGS``, its ``ttsr`` the one installed beside this interpreter."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    full_env = {**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1", **env}
    full_env.pop("TTSR_WEIGHTS", None)
    return subprocess.run(
        ["bash", ROOT / "examples" / name, *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
    )


def test_batch_example_runs_with_the_bundled_model(tmp_path: Path) -> None:
    result = _script("batch.sh", tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["failed"]) == (3, 0)
    for name in ("astronaut", "coffee", "chelsea"):
        assert Image.open(tmp_path / "sr" / f"{name}_ttsr.png").size == (256, 256)


def test_csnln_lite_training_goes_on_in_pieces(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    save_png(photos / "coffee.png", sample_image("coffee", (200, 150)))
    run = tmp_path / "run"
    tiny = ("--", "--config", "tiny", "--batch-size", "2", "--patch-size", "96", "-q")
    tiny += ("--log-every", "1")
    first = _script("train_csnln_lite.sh", run, photos, *tiny, STEPS="2", WORKERS="0")
    assert first.returncode == 0, first.stderr
    second = _script("train_csnln_lite.sh", run, photos, *tiny, STEPS="3", WORKERS="0")
    assert second.returncode == 0, second.stderr
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "event" not in r] == [1, 2, 3]  # 2 steps, then 1 more
    assert (run / "checkpoints" / "step-3.pt").exists() and (run / "model.safetensors").exists()
    usage = _script("train_csnln_lite.sh")
    assert usage.returncode == 2 and "RUN_DIR PHOTO_DIR" in usage.stdout
