"""``--ref auto --pool DIR`` and running under torchrun (ranks take their own inputs/GPUs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli, sample_image, save_png
from ttsr_cli import batch, devices


@pytest.fixture
def scene(tmp_path: Path) -> dict[str, Path]:
    """Two inputs; the pool holds an overlapping crop of each's scene and a distractor."""
    inputs, pool = tmp_path / "in", tmp_path / "pool"
    inputs.mkdir()
    pool.mkdir()
    for name in ("astronaut", "coffee"):
        big = sample_image(name, (256, 192))
        save_png(inputs / f"{name}.png", sample_image(name, (64, 48)))
        save_png(pool / f"{name}_ref.png", big[40:, 30:])
    save_png(pool / "chelsea.png", sample_image("chelsea", (200, 150)))
    return {"inputs": inputs, "pool": pool}


def test_each_input_gets_its_own_scene_from_the_pool(scene: dict[str, Path]) -> None:
    sources = batch.collect_inputs([scene["inputs"]])
    ranked = batch.ranked_references(sources, scene["pool"], 1, lambda message: None)
    chosen = {path.name: refs[0].name for path, refs in ranked.items()}
    assert chosen == {"astronaut.png": "astronaut_ref.png", "coffee.png": "coffee_ref.png"}
    two = batch.ranked_references(sources, scene["pool"], 2, lambda message: None)
    assert all(len(refs) == 2 for refs in two.values())


def test_cli_ref_auto(scene: dict[str, Path], tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli(
        "upscale",
        scene["inputs"],
        "--ref",
        "auto",
        "--pool",
        scene["pool"],
        "-w",
        tiny_weights,
        "-o",
        out,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["astronaut_ttsr.png", "coffee_ttsr.png"]
    used = {
        Path(r["input"]).name: [Path(ref).name for ref in r["references"]]
        for r in json.loads(result.stdout)["results"]
    }
    assert used == {"astronaut.png": ["astronaut_ref.png"], "coffee.png": ["coffee_ref.png"]}
    result = run_cli("upscale", scene["inputs"], "--ref", "auto", "-w", tiny_weights)
    assert result.returncode == 2
    assert "--ref auto needs --pool" in result.stderr


def test_torchrun_ranks_take_their_own_slice_and_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert batch.torchrun_shard() == "2/2"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.select_device("auto") == torch.device("cuda", 1)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert batch.torchrun_shard() is None
    assert devices.select_device("auto") == torch.device("cuda", 0)
