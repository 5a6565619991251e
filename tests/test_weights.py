"""Checkpoints load strictly in both formats, with the configuration read from the tensors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from conftest import TINY, run_cli, sample_image, save_png
from ttsr_cli.archs.ttsr import TTSR, TTSRConfig
from ttsr_cli.archs.ttsr.load import infer_config
from ttsr_cli.errors import TTSRError
from ttsr_cli.weights import load, save_safetensors


def load_model(path: Path) -> TTSR:
    model, descriptor = load(path)
    assert descriptor.family == "ttsr" and isinstance(model, TTSR)
    return model


def test_official_fixture_loads_strictly_with_no_flags(official: Path) -> None:
    model = load_model(official / "state_dict.pt")
    assert model.config == TTSRConfig(n_feats=32, num_res_blocks=(2, 2, 2, 1))
    state = torch.load(official / "state_dict.pt", weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_random_paper_checkpoint_in_original_layout_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TTSR()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}  # saved from DataParallel
    state.update({f"module.LTE_copy.{k}": v for k, v in model.LTE.state_dict().items()})
    path = tmp_path / "TTSR.pt"
    torch.save(state, path)
    loaded = load_model(path)
    assert loaded.config == TTSRConfig()
    assert torch.equal(loaded.MainNet.RB33[3].conv2.weight, model.MainNet.RB33[3].conv2.weight)


def test_safetensors_round_trip_keeps_the_configuration(tmp_path: Path) -> None:
    config = TTSRConfig(
        n_feats=8, num_res_blocks=(3, 0, 2, 1), res_scale=0.5, lte_widths=(4, 8, 16)
    )
    model = TTSR(config)
    save_safetensors(model, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert loaded.config == config  # res_scale comes from metadata, the rest from shapes
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_infer_config_counts_blocks_per_stage() -> None:
    config = TTSRConfig(n_feats=16, num_res_blocks=(4, 3, 2, 1), lte_widths=(8, 16, 24))
    assert infer_config(TTSR(config).state_dict()) == config


def _one_line(exc: pytest.ExceptionInfo[TTSRError]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    state = TTSR(TINY).state_dict()
    del state["MainNet.merge_tail.conv_tail2.bias"]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(TTSRError) as exc:
        load_model(tmp_path / "bad.pt")
    assert "missing: MainNet.merge_tail.conv_tail2.bias" in _one_line(exc)
    assert str(tmp_path / "bad.pt") in str(exc.value)


def test_unexpected_and_misshaped_tensors_are_named(tmp_path: Path) -> None:
    state = TTSR(TINY).state_dict()
    state["MainNet.extra.weight"] = torch.zeros(1)
    state["MainNet.conv12.bias"] = torch.zeros(5)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(TTSRError) as exc:
        load_model(tmp_path / "bad.pt")
    text = _one_line(exc)
    assert "unexpected: MainNet.extra.weight" in text
    assert "MainNet.conv12.bias (5,) != (32,)" in text


def test_metadata_that_contradicts_the_tensors_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in TTSR(TINY).state_dict().items()}
    save_file(
        state,
        str(tmp_path / "m.safetensors"),
        metadata={"config": '{"n_feats": 16, "num_res_blocks": [1, 1, 1, 1]}'},
    )
    with pytest.raises(TTSRError, match="metadata says"):
        load_model(tmp_path / "m.safetensors")


@pytest.mark.parametrize("name", ["random.pt", "random.safetensors", "random.pth"])
def test_random_bytes_give_one_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(os.urandom(4096))
    with pytest.raises(TTSRError) as exc:
        load_model(path)
    assert _one_line(exc).startswith(str(path))


class Exploit:
    """Pickled, it asks the loader to run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # runs on unpickling if the loader trusts the file
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"x": Exploit(marker)}, fh)
    with pytest.raises(TTSRError, match="refused: it holds Python code or objects"):
        load_model(path)
    assert not marker.exists()


def _weights_file(kind: str, folder: Path) -> Path:
    """A file that is not usable weights, in one of the ways a user meets."""
    path = folder / ("w.safetensors" if kind == "truncated safetensors" else "w.pt")
    if kind == "notes":
        path.write_text("my notes about the model\n")
    elif kind == "truncated":
        torch.save(TTSR(TINY).state_dict(), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "truncated safetensors":
        save_safetensors(TTSR(TINY), path)
        path.write_bytes(path.read_bytes()[:1000])
    elif kind == "pickled code":
        with open(path, "wb") as fh:
            pickle.dump({"x": Exploit(folder / "pwned")}, fh)
    else:
        torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("notes", "not a weights file (neither a PyTorch checkpoint nor safetensors)"),
        ("truncated", "a truncated PyTorch checkpoint"),
        ("truncated safetensors", "truncated or damaged"),
        ("pickled code", "refused: it holds Python code or objects"),
        ("another network", "not a checkpoint of a known network"),
    ],
)
def test_every_weights_failure_is_said_in_words(tmp_path: Path, kind: str, words: str) -> None:
    weights = _weights_file(kind, tmp_path)
    photo = save_png(tmp_path / "photo.png", sample_image("astronaut", (24, 24)))
    result = run_cli("upscale", photo, "--weights", weights, "-o", tmp_path / "out.png")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {weights}: "), result.stderr
    assert words in lines[0]
    assert not (tmp_path / "pwned").exists()


def test_a_file_that_is_not_a_ttsr_checkpoint(tmp_path: Path) -> None:
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(TTSRError, match="not a checkpoint of a known network"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(TTSRError, match="not found"):
        load_model(tmp_path / "absent.pt")


def test_global_skip_travels_in_the_metadata_and_changes_the_output(tmp_path: Path) -> None:
    skip = TTSRConfig(**{**TINY.to_dict(), "global_skip": True})
    torch.manual_seed(0)
    model = TTSR(skip).eval()
    save_safetensors(model, tmp_path / "skip.safetensors")
    loaded = load_model(tmp_path / "skip.safetensors")
    assert loaded.config.global_skip
    plain = TTSR(TINY).eval()
    plain.load_state_dict(model.state_dict())
    lr, lrsr = torch.rand(1, 3, 6, 6) * 2 - 1, torch.rand(1, 3, 24, 24) * 2 - 1
    with torch.inference_mode():
        with_skip = loaded(lr, lrsr, lrsr, lrsr).sr
        without = plain(lr, lrsr, lrsr, lrsr).sr
    torch.testing.assert_close(with_skip, (without + lrsr).clamp(-1, 1))


def test_training_checkpoint_keeps_what_shapes_cannot_tell(tmp_path: Path) -> None:
    """A ``ttsr train`` checkpoint (``step-N.pt``) loads with its global skip and res_scale."""
    config = TTSRConfig(n_feats=16, num_res_blocks=(1, 1, 1, 1), res_scale=0.5, global_skip=True)
    path = tmp_path / "step-10.pt"
    torch.save({"step": 10, "config": config.to_dict(), "model": TTSR(config).state_dict()}, path)
    assert load_model(path).config == config


def test_saved_weights_get_the_usual_permissions(tmp_path: Path) -> None:
    """Written through a 0600 temporary file, yet readable as any new file is (umask)."""
    mask = os.umask(0o022)
    try:
        path = tmp_path / "model.safetensors"
        save_safetensors(TTSR(TINY), path)
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)
