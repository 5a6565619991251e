"""Shared fixtures: paths to ../shared, tiny models, and real images to work on."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ttsr_cli.archs.ttsr import TTSR, TTSRConfig
from ttsr_cli.weights import save_safetensors

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
#: The bundled TTSR: a trained model, small enough for tests, that sees far.
BUNDLED = ROOT / "models" / "ttsr.safetensors"
OFFICIAL = SHARED / "fixtures" / "ttsr-official"

#: Few channels and blocks: runs in milliseconds, exercises every code path of the paper model.
TINY = TTSRConfig(n_feats=8, num_res_blocks=(1, 1, 1, 1), res_scale=1.0, lte_widths=(8, 16, 32))


#: The RL-Restore authors' checkpoints and outputs.
RL_FIXTURE = SHARED / "fixtures" / "rl-restore-official"


def require_rl_fixture() -> Path:
    if not (RL_FIXTURE / "weights.npz").is_file():
        pytest.skip(f"RL-Restore fixture not found at {RL_FIXTURE} (../shared is absent)")
    return RL_FIXTURE


def require_official() -> Path:
    if not (OFFICIAL / "state_dict.pt").is_file():
        pytest.skip(f"official TTSR fixture not found at {OFFICIAL} (../shared is absent)")
    return OFFICIAL


@pytest.fixture
def official() -> Path:
    return require_official()


@pytest.fixture
def tiny_model() -> TTSR:
    torch.manual_seed(0)
    return TTSR(TINY).eval()


@pytest.fixture
def tiny_weights(tmp_path: Path, tiny_model: TTSR) -> Path:
    path = tmp_path / "tiny.safetensors"
    save_safetensors(tiny_model, path)
    return path


def sample_image(name: str = "astronaut", size: tuple[int, int] | None = None) -> np.ndarray:
    """A real photo bundled with scikit-image, optionally resized to ``size`` (w, h)."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if size is not None:
        image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
    return image


def save_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array).save(path)
    return path


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``ttsr`` in a real subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "ttsr_cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


#: ``python -c`` code running ``ttsr`` that reports its peak RSS (kB) on stderr's last line.
_PEAK_RSS = (
    "import atexit, resource, runpy, sys\n"
    "atexit.register(lambda: print('peak-rss-kb', "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
    "sys.argv[0] = 'ttsr'\n"
    "runpy.run_module('ttsr_cli', run_name='__main__')\n"
)


def run_cli_peak(*args: str | Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """``ttsr ARGS`` in a fresh process, as :func:`run_cli`, and its peak RSS in bytes."""
    result = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("peak-rss-kb "), result.stderr
    return result, int(last.split()[1]) * 1024


def kill_mid_write(*args: str | Path, skip: int, scratch: Path, deadline_s: float = 120) -> Path:
    """Run ``ttsr`` under ``slow_writes.py``, SIGKILL it inside write number ``skip + 1``, and
    return the path that write was filling (half-written, fsynced) when the kill landed.

    Killing at a moment chosen by the writer, not by a timer, is what lets a test see the state a
    crash mid-write leaves: a timed kill lands during imports or between the millisecond writes.
    """
    marker = scratch / "slow-write.marker"
    log = scratch / "slow-write.stderr"
    env = {**os.environ, "SLOW_WRITE_MARKER": str(marker), "SLOW_WRITE_SKIP": str(skip)}
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "slow_writes.py"), *map(str, args)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )
    try:
        end = time.monotonic() + deadline_s
        while not marker.exists():
            if proc.poll() is not None:
                why = f"ttsr exited ({proc.returncode}) before the slow write"
                pytest.fail(f"{why}:\n{log.read_text()}")
            if time.monotonic() > end:
                pytest.fail(f"no slow write within {deadline_s} s:\n{log.read_text()}")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()  # a no-op after the SIGKILL; on a failure above, no process is left behind
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return Path(marker.read_text())


def make_cufed5(root: Path, ids: tuple[str, ...] = ("000", "001"), levels: int = 5) -> Path:
    """A CUFED5-layout tree: ``NNN_0.png`` inputs and ``NNN_1..levels.png`` references."""
    root.mkdir(parents=True, exist_ok=True)
    for key in ids:
        for level in range(levels + 1):
            save_png(root / f"{key}_{level}.png", sample_image("astronaut", (20 + level, 16)))
    return root
