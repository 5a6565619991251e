"""A wheel built from the checkout carries the model registry, cards and the bundled model.

The wheel goes into a fresh virtual environment with no dependencies at all, and is imported
from a temporary folder with no path to the checkout: what it lists can only come from the
installed package data.  Listing the registry imports neither torch nor huggingface_hub
(:mod:`ttsr_cli.registry` defers them), which is why no dependency is needed.  Then the
running environment's packages are made visible to it (a ``.pth`` line, which does not
process that environment's editable install of this project), and ``ttsr upscale`` runs from
the wheel's code with the wheel's bundled default model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from PIL import Image

from conftest import ROOT, sample_image, save_png

LIST = (
    "import json, sys; from ttsr_cli.registry import load_registry, registry_path; "
    "r = load_registry(); "
    "print(json.dumps({'path': str(registry_path()), 'default': r.default, "
    "'models': sorted(r.models), "
    "'cards': [(r.root / m.card).is_file() for m in r.models.values()], "
    "'heavy': [m for m in ('torch', 'huggingface_hub') if m in sys.modules]}))"
)


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TTSR_REGISTRY")}
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result


def test_the_wheel_carries_the_registry_and_the_bundled_model(tmp_path: Path) -> None:
    pip = (sys.executable, "-m", "pip")
    run(*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", ROOT, "-w", tmp_path / "dist")
    (wheel,) = (tmp_path / "dist").glob("ttsr-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    listing = json.loads(run(python, "-c", LIST, cwd=tmp_path).stdout)
    assert Path(listing["path"]).is_relative_to(venv)
    assert listing["models"] == [
        "csnln-x2",
        "csnln-x3",
        "csnln-x4",
        "rl-restore-authors",
        "sftgan",
        "sftgan-pytorch",
        "ttsr",
        "ttsr-gan",
        "ttsr-rec",
    ]
    assert listing["default"] == "ttsr"
    assert all(listing["cards"]) and listing["heavy"] == []

    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(purelib.stdout.strip()) / "deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    image = save_png(tmp_path / "photo.png", sample_image("astronaut", (48, 40)))
    upscale = "import sys, ttsr_cli.cli as c; print(c.__file__, file=sys.stderr); c.app()"
    out = tmp_path / "x4.png"
    args = ("upscale", image, "-o", out)  # no weights: the wheel's own bundled model
    result = run(python, "-c", upscale, *args, cwd=tmp_path)
    assert Path(result.stderr.splitlines()[0]).is_relative_to(venv)
    assert Image.open(out).size == (192, 160)
