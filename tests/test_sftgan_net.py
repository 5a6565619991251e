"""SFT-GAN's networks against the authors' own outputs (``../shared/fixtures/sftgan-official``):
both generator layouts, the condition network, OutdoorSceneSeg, and the one-line refusals.

The segmentation weights (about 209 MB) are regenerated once per module by the fixture's
``make_seg_weights.py``; every network runs once per module, on one thread (on a shared
2-core machine two spinning OpenMP threads made the generator 20x slower)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_sftgan_fixture, run_cli, sample_image, save_png
from ttsr_cli import archs
from ttsr_cli.archs import check_state_dict
from ttsr_cli.archs.blocks import fold_batchnorm
from ttsr_cli.archs.sftgan import CLASSES, SFTGAN, OutdoorSceneSeg, SFTGANConfig
from ttsr_cli.archs.sftgan.load import FAMILY, PRIOR, load_segmentation
from ttsr_cli.errors import TTSRError
from ttsr_cli.run.sftgan import SFTGANRunner
from ttsr_cli.weights import load, read_checkpoint

#: Fixture file stem and parameter count of each published layout.
LAYOUTS = {"pytorch": ("sftgan", 1_833_763), "torch": ("sftgan_torch", 1_612_195)}
#: The fixture's tolerances (README, "What a compatible implementation shows").
SR_TOL, SR_CHAINED_TOL, CONDNET_TOL = 2e-5, 5e-5, 1e-5
PROB_TOL, LOGITS_TOL, ARGMAX_MARGIN = 5e-5, 1e-3, 1e-4
#: ``sum(|t|)`` of the segmentation weights, as make_seg_weights.py prints it.
SEG_FINGERPRINT = 1135127.545611


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fixture() -> Path:
    return require_sftgan_fixture()


@pytest.fixture(scope="module")
def parity(fixture: Path) -> dict[str, dict[str, torch.Tensor]]:
    return torch.load(fixture / "parity.pt", weights_only=True)


@pytest.fixture(scope="module")
def generators(fixture: Path) -> dict[str, tuple[SFTGAN, archs.Descriptor]]:
    """Each layout loaded from its legacy-serialized ``.pth`` as users will give it."""
    return {
        variant: load(fixture / f"generator_{stem}.pth")  # type: ignore[misc]
        for variant, (stem, _) in LAYOUTS.items()
    }


@pytest.fixture(scope="module")
def sr(generators: dict, parity: dict) -> dict[str, torch.Tensor]:
    inputs = parity["inputs"]
    with torch.inference_mode():
        return {v: model(inputs["lr"], inputs["cond"]) for v, (model, _) in generators.items()}


@pytest.fixture(scope="module")
def seg_file(fixture: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The file, removed after the module (pytest keeps its last three temporary folders,
    which would be 209 MB each)."""
    out = tmp_path_factory.mktemp("sftgan") / "seg.pth"
    script, keys = fixture / "make_seg_weights.py", fixture / "seg_keys.json"
    done = subprocess.run(
        [sys.executable, str(script), str(keys), str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    printed = float(re.search(r"fingerprint ([0-9.]+)", done.stdout).group(1))
    assert printed == pytest.approx(SEG_FINGERPRINT, rel=1e-9), "not the fixture's weights"
    yield out
    out.unlink()


@pytest.fixture(scope="module")
def seg_state(seg_file: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(seg_file)[0]


@pytest.fixture(scope="module")
def segmentation(seg_state: dict) -> OutdoorSceneSeg:
    return load_segmentation(seg_state)


@pytest.fixture(scope="module")
def seg_out(segmentation: OutdoorSceneSeg, parity: dict) -> dict[str, torch.Tensor]:
    """One forward pass: the probabilities, and the 1/8-size logits seen on the way."""
    seen: dict[str, torch.Tensor] = {}
    hook = segmentation.feature.register_forward_hook(
        lambda _m, _i, out: seen.__setitem__("logits", out)
    )
    with torch.inference_mode():
        prob = segmentation(parity["inputs"]["seg_input"])
    hook.remove()
    return {"prob": prob, "logits": seen["logits"]}


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("variant", LAYOUTS)
def test_generators_load_strictly_with_the_layout_from_keys(
    fixture: Path, generators: dict, variant: str
) -> None:
    stem, parameters = LAYOUTS[variant]
    model, descriptor = generators[variant]
    assert not model.training and model.config == SFTGANConfig(variant=variant)
    assert (descriptor.family, descriptor.scale, descriptor.takes_reference) == ("sftgan", 4, False)
    assert descriptor.prior == PRIOR and descriptor.size_multiple == 2
    assert descriptor.parameters == parameters == sum(p.numel() for p in model.parameters())
    assert descriptor.to_dict()["prior"] == PRIOR
    state = torch.load(fixture / f"generator_{stem}.pth", weights_only=True)
    assert archs.detect(state) is FAMILY
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())
    prefixed = {f"module.{k}": t for k, t in state.items()}  # a DataParallel save loads too
    assert archs.load(prefixed)[0].config.variant == variant
    other = "torch" if variant == "pytorch" else "pytorch"
    with pytest.raises(TTSRError) as caught:
        check_state_dict(SFTGAN(SFTGANConfig(variant=other)), state, "the other layout")
    assert "HR_branch" in one_line(caught)
    with pytest.raises(TTSRError) as caught:
        archs.load(state, {"config": {"variant": other}})
    assert f"variant {variant}" in one_line(caught)


@pytest.mark.parametrize("variant", LAYOUTS)
def test_generators_give_the_authors_outputs(
    fixture: Path, generators: dict, parity: dict, sr: dict, variant: str
) -> None:
    stem = LAYOUTS[variant][0]
    inputs, outputs = parity["inputs"], parity["outputs"]
    lr_png = np.array(Image.open(fixture / "lr.png").convert("RGB"))
    assert np.array_equal(lr_png, inputs["lr_uint8"].numpy())
    assert torch.equal(
        (inputs["lr_uint8"].double() / 255).float().permute(2, 0, 1), inputs["lr"][0]
    )
    with torch.inference_mode():
        condnet = generators[variant][0].CondNet(inputs["cond"])
    assert (condnet - outputs[f"condnet_{stem}"]).abs().max() <= CONDNET_TOL
    official = outputs[f"sr_{stem}"]
    assert sr[variant].shape == official.shape == (1, 3, 160, 224)
    assert (sr[variant] - official).abs().max() <= SR_TOL
    # 8-bit as the official tensor2img: clamp, x255, round half to even (in float32)
    picture = (sr[variant][0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    expected = outputs[f"img_{stem}"]
    png = np.array(Image.open(fixture / f"expected_{stem}.png").convert("RGB"))
    assert np.array_equal(png, expected.numpy())
    scaled = official[0].clamp(0, 1).permute(1, 2, 0) * 255
    near_half = (scaled - scaled.floor() - 0.5).abs() <= SR_TOL * 255
    differ = picture != expected
    assert (picture.int() - expected.int()).abs().max() <= 1
    assert not (differ & ~near_half).any()


def test_segmentation_gives_the_authors_probabilities(
    segmentation: OutdoorSceneSeg, parity: dict, seg_out: dict
) -> None:
    outputs = parity["outputs"]
    assert sum(p.numel() for p in segmentation.parameters()) == 52_068_296
    assert len(CLASSES) == 8 and CLASSES[0] == "background" and CLASSES[7] == "animal"
    assert (seg_out["logits"] - outputs["seg_lowres_logits"]).abs().max() <= LOGITS_TOL
    prob = seg_out["prob"]
    assert prob.shape == outputs["seg_prob"].shape
    assert (prob - outputs["seg_prob"]).abs().max() <= PROB_TOL
    top2 = outputs["seg_prob"][0].topk(2, dim=0).values
    close = (top2[0] - top2[1]) < ARGMAX_MARGIN
    differ = prob[0].argmax(0).to(torch.uint8) != outputs["seg_argmax"]
    assert not (differ & ~close).any()


def test_folded_segmentation_gives_the_authors_probabilities(
    segmentation: OutdoorSceneSeg, parity: dict, seg_out: dict
) -> None:
    """``ttsr upscale`` runs the segmentation with its BatchNorms folded into the convolutions
    and in NHWC: still within the fixture's tolerances."""
    folded = fold_batchnorm(copy.deepcopy(segmentation)).to(memory_format=torch.channels_last)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    outputs = parity["outputs"]
    with torch.inference_mode():
        x = parity["inputs"]["seg_input"].contiguous(memory_format=torch.channels_last)
        logits, prob = folded.logits(x), folded(x)
    assert (logits - outputs["seg_lowres_logits"]).abs().max() <= LOGITS_TOL
    assert (prob - outputs["seg_prob"]).abs().max() <= PROB_TOL
    assert 0 < (prob - seg_out["prob"]).abs().max() <= PROB_TOL  # rounding moved, no more
    top2 = outputs["seg_prob"][0].topk(2, dim=0).values
    close = (top2[0] - top2[1]) < ARGMAX_MARGIN
    differ = prob[0].argmax(0).to(torch.uint8) != outputs["seg_argmax"]
    assert not (differ & ~close).any()


def test_our_probabilities_as_priors_give_the_authors_pixels(
    generators: dict, parity: dict, seg_out: dict
) -> None:
    """Segmentation then SR, each ours (the LR side of the chain, imresize, is a runner's)."""
    with torch.inference_mode():
        for variant, (model, _) in generators.items():
            out = model(parity["inputs"]["lr"], seg_out["prob"])
            official = parity["outputs"][f"sr_{LAYOUTS[variant][0]}"]
            assert (out - official).abs().max() <= SR_CHAINED_TOL, variant


def test_segmentation_loads_with_or_without_batch_counters(
    seg_state: dict, segmentation: OutdoorSceneSeg
) -> None:
    counters = [k for k in seg_state if k.endswith("num_batches_tracked")]
    assert len(counters) == 3 + 3 * 33 + 4 + 1  # stem, bottlenecks, projections, head
    without = {k: t for k, t in seg_state.items() if k not in counters}
    loaded = load_segmentation(without).state_dict()
    reference = segmentation.state_dict()
    assert all(torch.equal(loaded[k], reference[k]) for k in without)
    with pytest.raises(TTSRError) as caught:
        load_segmentation({**without, counters[0]: seg_state[counters[0]]})
    assert "missing" in one_line(caught)


def test_segmentation_where_a_generator_is_expected_is_one_line(
    seg_file: Path, seg_state: dict, fixture: Path
) -> None:
    assert archs.detect(seg_state) is FAMILY
    for expect in (None, "sftgan"):
        with pytest.raises(TTSRError) as caught:
            load(seg_file, expect=expect)
        message = one_line(caught)
        assert "OutdoorSceneSeg" in message and "not an SFT-GAN generator" in message
    generator = torch.load(fixture / "generator_sftgan.pth", weights_only=True)
    with pytest.raises(TTSRError) as caught:
        load_segmentation(generator)
    assert "generator" in one_line(caught)


def test_a_broken_generator_is_one_line(fixture: Path) -> None:
    state = torch.load(fixture / "generator_sftgan_torch.pth", weights_only=True)
    missing = {k: t for k, t in state.items() if k != "sft_branch.7.sft1.SFT_shift_conv1.bias"}
    shaped = {**state, "HR_branch.6.weight": torch.zeros(64, 64, 1, 1)}
    both = {**state, "HR_branch.0.weight": torch.zeros(256, 64, 3, 3)}
    for broken, said in ((missing, "missing: sft_branch.7"), (shaped, "HR_branch.6.weight")):
        with pytest.raises(TTSRError) as caught:
            archs.load(broken)
        assert said in one_line(caught)
    with pytest.raises(TTSRError) as caught:
        archs.load(both)
    assert "not a known layout" in one_line(caught)


@pytest.mark.parametrize("variant", LAYOUTS)
def test_reach_bounds_what_an_output_pixel_sees(variant: str) -> None:
    """The descriptor's reach (tiles with that margin give the untiled pixels) is tight."""
    torch.manual_seed(0)
    config = SFTGANConfig(variant, num_blocks=2, channels=8, cond_channels=4, cond_hidden=8)
    model, descriptor = FAMILY.create(config.to_dict())
    lr = torch.rand(1, 3, 24, 24, requires_grad=True)
    cond = torch.rand(1, 8, 96, 96, requires_grad=True)
    model(lr, cond)[0, :, 48, 48].sum().backward()
    rows, cols = torch.nonzero(lr.grad[0].abs().sum(0), as_tuple=True)
    seen = max((rows - 12).abs().max(), (cols - 12).abs().max())
    assert descriptor.tiling.reach - 1 <= seen <= descriptor.tiling.reach == config.reach
    hr_rows = torch.nonzero(cond.grad[0].abs().sum((0, 2)), as_tuple=True)[0]
    assert (hr_rows // 4 - 12).abs().max() <= config.reach


def test_priors_of_the_wrong_size_are_refused() -> None:
    """The official code fails deep inside for an odd LR (priors of 8 * ceil(4h / 8) rows)."""
    model = SFTGAN(SFTGANConfig(num_blocks=1, channels=8, cond_channels=4, cond_hidden=8))
    with pytest.raises(ValueError, match=r"priors of shape \[1, 8, 180, 276\]"):
        model(torch.rand(1, 3, 45, 69), torch.rand(1, 8, 184, 280))


def test_the_pipeline_from_lr_png_gives_the_authors_pixels(
    fixture: Path, generators: dict, segmentation: OutdoorSceneSeg, seg_file: Path, tmp_path: Path
) -> None:
    """End to end as a user runs it: lr.png, the generator file and the segmentation file
    through ``ttsr upscale``; the torch layout through the same runner in-process."""
    out = tmp_path / "sr.png"
    args = ("upscale", fixture / "lr.png", "-w", fixture / "generator_sftgan.pth")
    priors = tmp_path / "priors"
    extra = ("--seg-weights", seg_file, "--save-priors", priors)
    result = run_cli(*args, *extra, "-o", out, "--json", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in priors.iterdir()) == sorted(
        ["sr_segmentation.png", *(f"sr_prob_{name}.png" for name in CLASSES)]
    )
    ours = np.asarray(Image.open(priors / "sr_segmentation.png"))
    official = np.asarray(Image.open(fixture / "segmentation.png").convert("RGB"))
    assert (ours != official).any(axis=2).sum() <= 9  # README: ties within 1e-4 may flip
    [record] = json.loads(result.stdout)["results"]
    assert (
        set(record["classes"]) == set(CLASSES) and abs(sum(record["classes"].values()) - 1) < 1e-3
    )
    outputs = {"sftgan": np.asarray(Image.open(out))}
    model, descriptor = generators["torch"]
    runner = SFTGANRunner(model, descriptor, segmentation, torch.device("cpu"))
    outputs["sftgan_torch"] = runner.upscale(np.asarray(Image.open(fixture / "lr.png")))
    for name, got in outputs.items():
        expected = np.asarray(Image.open(fixture / f"expected_{name}.png"))
        off = np.abs(got.astype(np.int16) - expected)
        assert off.max() <= 1 and (off > 0).mean() <= 1e-3, name


def test_a_generator_without_its_segmentation_network_is_one_line(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, _ = archs.family("sftgan").create({})
    weights = tmp_path / "sftgan.pth"
    torch.save(model.state_dict(), weights)
    photo = save_png(tmp_path / "photo.png", sample_image("coffee", (32, 24)))
    result = run_cli("upscale", photo, "-w", weights, "-o", tmp_path / "out.png")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pass --seg-weights" in lines[0], result.stderr
    assert not (tmp_path / "out.png").exists()


def test_seg_weights_for_a_model_without_priors_is_refused(tiny_weights: Path) -> None:
    from ttsr_cli import run

    settings = run.settings("cpu", seg_weights="segmentation_OST_bic.pth")
    with pytest.raises(TTSRError, match="takes no priors"):
        run.load_runner(None, str(tiny_weights), settings)
