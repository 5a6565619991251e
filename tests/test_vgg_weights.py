"""VGG19 weights through the Hub protocol (a loopback server), the cache, and files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_server import fake_hub
from safetensors.torch import save_file

from conftest import run_cli, sample_image, save_png
from ttsr_cli.archs.ttsr.lte import LTE
from ttsr_cli.archs.vgg import VGG19Features
from ttsr_cli.errors import TTSRError
from ttsr_cli.vgg_weights import init_lte, perceptual_network, vgg19_features

REPO, FILE = "timm/vgg19.tv_in1k", "model.safetensors"
FETCH = "from ttsr_cli.vgg_weights import vgg19_features; print(len(vgg19_features('hub')))"


@pytest.fixture(scope="module")
def vgg_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A VGG19 in timm's layout (``features.N.*`` plus a classifier head) with random weights."""
    torch.manual_seed(0)
    state = {
        k: v.contiguous()
        for k, v in VGG19Features().state_dict().items()
        if k.startswith("features.")
    }
    state["head.fc.weight"] = torch.zeros(10, 4)
    path = tmp_path_factory.mktemp("vgg") / FILE
    save_file(state, str(path))
    return path.read_bytes()


def fetch(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A fresh process, so the Hub client reads HF_ENDPOINT/HF_HUB_OFFLINE as a user's would."""
    return subprocess.run(
        [sys.executable, "-c", FETCH],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )


def test_download_then_offline_from_the_cache(vgg_bytes: bytes, tmp_path: Path) -> None:
    home = {"HF_HOME": str(tmp_path / "hf")}
    with fake_hub() as hub:
        hub.files[(REPO, FILE)] = vgg_bytes
        first = fetch({**home, "HF_ENDPOINT": hub.url})
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == "13"  # the 13 convs of VGG19 up to relu5_1
        assert any(r.startswith("GET /timm/vgg19.tv_in1k/resolve/") for r in hub.requests)
    offline = fetch({**home, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert offline.returncode == 0, offline.stderr


# Offline with a cold cache (exit 2, what to do): in test_train.py,
# test_offline_perceptual_training_fails_with_a_clear_message.


def test_missing_file_fails_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ttsr train --preset gan`` (its perceptual loss needs VGG19) against a Hub without it."""
    photos = tmp_path / "photos"
    photos.mkdir()
    save_png(photos / "a.png", sample_image("astronaut", (96, 96)))
    args = ("--preset", "gan", "--config", "tiny", "--batch-size", "1", "--device", "cpu")
    with fake_hub() as hub:
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        result = run_cli(
            "train", "--data", photos, "--out", tmp_path / "run", "--steps", "1", *args
        )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not download" in errors[0], result.stderr


def test_a_download_cut_off_half_way_resumes_intact(vgg_bytes: bytes, tmp_path: Path) -> None:
    with fake_hub() as hub:
        hub.files[(REPO, FILE)] = vgg_bytes
        hub.truncate.add((REPO, FILE))
        result = fetch({"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url})
        assert result.returncode == 0, result.stderr
        assert sum(r.startswith("GET /timm") for r in hub.requests) == 2
    (cached,) = (tmp_path / "hf").rglob(FILE)
    assert cached.read_bytes() == vgg_bytes


def test_lte_and_perceptual_network_take_vgg_weights(vgg_bytes: bytes, tmp_path: Path) -> None:
    path = tmp_path / "vgg.safetensors"
    path.write_bytes(vgg_bytes)
    layers = vgg19_features(str(path))
    lte = LTE()
    init_lte(lte, layers)
    assert torch.equal(lte.slice3[3].weight, layers[10]["weight"])
    assert torch.equal(lte.slice1[0].bias, layers[0]["bias"])
    net = perceptual_network(layers)
    assert torch.equal(net.features[28].weight, layers[28]["weight"])
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 512, 2, 2)
    with pytest.raises(TTSRError, match="LTE widths"):
        init_lte(LTE((16, 32, 64)), layers)


def test_a_file_that_is_not_vgg19(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, str(path))
    with pytest.raises(TTSRError, match="not a VGG19"):
        vgg19_features(str(path))
