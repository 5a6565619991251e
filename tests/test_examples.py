"""``examples/batch.sh`` as the examples README runs it, with the bundled model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from conftest import ROOT


def test_batch_example_runs_with_the_bundled_model(tmp_path: Path) -> None:
    # The script calls `ttsr`: the one installed beside this interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1"}
    env.pop("TTSR_WEIGHTS", None)
    result = subprocess.run(
        ["bash", ROOT / "examples" / "batch.sh", tmp_path],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["ok"], report["failed"]) == (3, 0)
    for name in ("astronaut", "coffee", "chelsea"):
        assert Image.open(tmp_path / "sr" / f"{name}_ttsr.png").size == (256, 256)
