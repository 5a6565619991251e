"""Training SFT-GAN (``ttsr train --arch sftgan``) and fine-tuning its segmentation network
(``--arch sftgan-seg``) on photos with class maps: the data, both presets, the ACD, resume,
starting from the authors' layouts, and the one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import (
    require_sftgan_fixture,
    run_cli,
    run_torchrun_train,
    sample_image,
    save_png,
)
from ttsr_cli.archs.sftgan.acd import ACD
from ttsr_cli.archs.sftgan.load import load_segmentation
from ttsr_cli.archs.sftgan.segmentation import OutdoorSceneSeg
from ttsr_cli.archs.vgg import CONV5_4, VGG19Features
from ttsr_cli.errors import TTSRError
from ttsr_cli.imresize import imresize
from ttsr_cli.priors import PriorMaps
from ttsr_cli.train import TrainOptions, train
from ttsr_cli.train.loop import list_checkpoints
from ttsr_cli.train.sftgan import SFT_RATE, SegPatchDataset, class_loss
from ttsr_cli.weights import load, read_checkpoint

PHOTOS = {"astronaut": (200, 168), "coffee": (184, 144), "chelsea": (176, 160)}


def label_map(photo: np.ndarray) -> np.ndarray:
    """Classes read off the photo itself (its red channel in 8 bands), so that a patch's
    classes can be checked against the patch's own pixels."""
    return (photo[..., 0] // 32).astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Three real photos (odd sizes among them) and their grey label-map PNGs."""
    root = tmp_path_factory.mktemp("sftgan-data")
    photos, maps = root / "photos", root / "maps"
    photos.mkdir()
    maps.mkdir()
    for name, size in PHOTOS.items():
        photo = sample_image(name, size)[:-1, :-3]  # sides not multiples of 4
        save_png(photos / f"{name}.png", photo)
        save_png(maps / f"{name}.png", label_map(photo))
    return photos, maps


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VGG19 up to conv5_4 with seeded random weights (ImageNet's are not fetched here)."""
    torch.manual_seed(0)
    net = VGG19Features(CONV5_4)
    path = tmp_path_factory.mktemp("vgg") / "vgg19.safetensors"
    state = {k: v.contiguous() for k, v in net.state_dict().items() if k.startswith("features.")}
    save_file(state, str(path))
    return path


def options(data: tuple[Path, Path], out: Path, **kw: object) -> TrainOptions:
    fields = {
        "data": data[0],
        "out": out,
        "arch": "sftgan",
        "config": {"num_blocks": 1, "channels": 8, "cond_channels": 8, "cond_hidden": 8},
        "batch_size": 2,
        "patch_size": 32,
        "log_every": 1,
        "seg_maps": data[1],
        **kw,
    }
    return TrainOptions(**fields)  # type: ignore[arg-type]


def log_lines(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [line for line in lines if "event" not in line]


def test_a_sample_is_an_aligned_patch_of_photo_lr_and_map(data: tuple[Path, Path]) -> None:
    """The LR is the MATLAB-bicubic x1/4 of the photo cropped to a multiple of 4, rounded
    to 8 bits; the HR patch lies over the LR patch; the priors are the one-hot map of the
    same pixels, flipped with them; the category is the patch's most common class."""
    photos, maps = data
    dataset = SegPatchDataset(photos, PriorMaps(maps), 32, seed=3)
    name = dataset.inputs[0]
    photo = np.asarray(Image.open(name))
    h, w = (s // 4 * 4 for s in photo.shape[:2])
    lr = np.round(imresize(photo[:h, :w] / 255.0, 0.25).clip(0, 1) * 255).astype(np.uint8)
    assert np.array_equal(dataset._pair(0)[1], lr)
    for k in range(12):
        sample = dataset[k]
        hr = (sample["hr"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        labels = sample["seg"].argmax(0).numpy()
        assert np.array_equal(labels, label_map(hr))
        assert sample["seg"].sum(0).eq(1).all()
        assert int(sample["category"]) == np.bincount(labels.ravel()).argmax()
        down = torch.nn.functional.avg_pool2d(sample["hr"][None], 4)[0]
        assert (down - sample["lr"]).abs().mean() < 0.05  # the LR lies under the HR


def test_class_loss_ignores_background_and_is_zero_without_other_classes() -> None:
    logits = torch.randn(4, 8)
    mixed = torch.tensor([0, 3, 0, 5])
    expected = torch.nn.functional.cross_entropy(logits[[1, 3]], mixed[[1, 3]])
    assert torch.allclose(class_loss(logits, mixed), expected)
    assert class_loss(logits, torch.zeros(4, dtype=torch.long)).item() == 0.0


def test_the_acd_has_the_authors_layout_at_96_pixels() -> None:
    """Eight convs, BatchNorm on all but the first, 6x6x512 features into 100-unit heads."""
    acd = ACD(96)
    convs = [m for m in acd.feature if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in acd.feature if isinstance(m, torch.nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [c.stride[0] for c in convs] == [1, 2] * 4 and len(norms) == 7
    assert acd.gan[0].in_features == acd.cls[0].in_features == 512 * 6 * 6
    gan, cls = acd(torch.rand(2, 3, 96, 96))
    assert gan.shape == (2, 1) and cls.shape == (2, 8)
    with pytest.raises(ValueError, match="multiple of 16"):
        ACD(40)


def test_rec_lowers_the_l1_and_its_model_upscales_with_maps(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    """Sixty L1 steps of a tiny generator halve its loss at least; the file is an SFT-GAN
    that ``ttsr upscale --seg-maps`` runs."""
    out = tmp_path / "rec"
    train(options(data, out, steps=60, lr=2e-3))
    lines = log_lines(out)
    first = np.mean([line["rec"] for line in lines[:5]])
    last = np.mean([line["rec"] for line in lines[-5:]])
    assert last < first / 2, (first, last)
    _, descriptor = load(out / "model.safetensors", expect="sftgan")
    assert descriptor.config["num_blocks"] == 1
    lr = sample_image("coffee", (40, 30))
    save_png(tmp_path / "lr.png", lr)
    np.save(tmp_path / "lr.npy", np.full((120, 160), 3, dtype=np.int64))
    result = run_cli(
        "upscale", tmp_path / "lr.png", "-w", out / "model.safetensors",
        "--seg-maps", tmp_path / "lr.npy", "-o", tmp_path / "sr.png", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["classes"]["grass"] == 1.0


def test_gan_pretrains_on_l1_then_adds_perceptual_adversarial_and_class_losses(
    data: tuple[Path, Path], vgg_file: Path, tmp_path: Path
) -> None:
    """Without --init, two epochs of L1 (3 photos, 2 per step: 4 steps), then the authors'
    losses, with the SFT layers at 5x the rate; the ACD learns (its loss is logged).  In
    channels-last, where the batch's class labels must stay 1-D."""
    out = tmp_path / "gan"
    train(options(data, out, steps=7, preset="gan", vgg=str(vgg_file), channels_last=True))
    lines = log_lines(out)
    assert [set(line) >= {"rec"} for line in lines] == [True] * 4 + [False] * 3
    for line in lines[4:]:
        assert {"per", "adv", "cls", "d_loss", "d_real", "d_fake"} <= set(line)
        expected = line["per"] + 5e-3 * (line["adv"] + line["cls"])
        assert line["loss"] == pytest.approx(expected, rel=1e-5)
        assert line["lr_sft"] == pytest.approx(SFT_RATE * line["lr"])
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata()["preset"] == "gan"


def test_gan_resumes_exactly_with_its_discriminator(
    data: tuple[Path, Path], vgg_file: Path, tmp_path: Path
) -> None:
    """Five steps straight equal three, a stop, and two more: generator, ACD and both
    optimisers come back from the checkpoint."""
    straight = tmp_path / "straight"
    train(options(data, straight, steps=6, preset="gan", vgg=str(vgg_file)))
    split = tmp_path / "split"
    train(options(data, split, steps=5, preset="gan", vgg=str(vgg_file), checkpoint_every=5))
    assert [p.name for p in list_checkpoints(split / "checkpoints")] == ["step-5.pt"]
    train(options(data, split, steps=6, preset="gan", vgg=str(vgg_file), resume=True))
    a, _ = read_checkpoint(straight / "model.safetensors")
    b, _ = read_checkpoint(split / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    acd_a = torch.load(list_checkpoints(straight / "checkpoints")[-1], weights_only=True)["acd"]
    acd_b = torch.load(list_checkpoints(split / "checkpoints")[-1], weights_only=True)["acd"]
    assert all(torch.equal(acd_a[k], acd_b[k]) for k in acd_a)


@pytest.mark.slow  # two processes and a gloo rendezvous
def test_gan_under_two_process_ddp_ends_with_identical_ranks(
    data: tuple[Path, Path], vgg_file: Path, tmp_path: Path
) -> None:
    """Generator and discriminator in step on both ranks, through the L1 pretraining (two
    epochs: 3 photos, 2 per rank, 1 step each) and two gan steps."""
    run = tmp_path / "ddp"
    result = run_torchrun_train(
        *("--arch", "sftgan", "--config", "tiny", "--preset", "gan", "--vgg", vgg_file),
        *("--data", data[0], "--seg-maps", data[1], "--out", run),
        *("--steps", "4", "--batch-size", "2", "--patch-size", "32", "--log-every", "1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (run / "log.jsonl").read_text().splitlines()
    end = json.loads(lines[-1])
    assert end["event"] == "end" and end["rank_checksums"][0] == end["rank_checksums"][1]
    assert ["adv" in json.loads(line) for line in lines[:-1]] == [False, False, True, True]


@pytest.mark.parametrize("layout", ["sftgan", "sftgan_torch"])
def test_init_fine_tunes_a_published_layout_from_its_first_step(
    data: tuple[Path, Path], vgg_file: Path, tmp_path: Path, layout: str
) -> None:
    """--init reads the configuration off the file (both published layouts); gan then
    starts at once, with no L1 pretraining."""
    source = require_sftgan_fixture() / f"generator_{layout}.pth"
    out = tmp_path / layout
    opts = options(data, out, steps=1, preset="gan", vgg=str(vgg_file), init=source)
    opts.config = None
    train(opts)
    assert "adv" in log_lines(out)[0]
    before, _ = load(source, expect="sftgan")
    after, descriptor = load(out / "model.safetensors", expect="sftgan")
    assert descriptor.config == before.config.to_dict()
    pairs = zip(before.parameters(), after.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in pairs)


def test_segmentation_fine_tuning_lowers_its_loss_with_batchnorm_frozen(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    """sftgan-seg: convolutions learn, BatchNorm keeps its statistics and affine weights, and
    the file is a segmentation network ``--seg-weights`` loads."""
    out = tmp_path / "seg"
    opts = options(data, out, arch="sftgan-seg", config={}, steps=4, patch_size=64, lr=1e-3)
    train(opts)
    lines = log_lines(out)
    assert lines[-1]["ce"] < lines[0]["ce"]
    state, metadata = read_checkpoint(out / "model.safetensors")
    assert metadata["arch"] == "sftgan-seg"
    model = load_segmentation(state)
    torch.manual_seed(0)  # the trainer's seed: the weights it started from
    start = OutdoorSceneSeg().state_dict()
    norms = {k for k, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    frozen = [k for k in state if k.rsplit(".", 1)[0] in norms]
    convs = [k for k in state if k.endswith(".weight") and k not in frozen]
    assert len(frozen) > 500 and all(torch.equal(state[k], start[k]) for k in frozen)
    assert all(not torch.equal(state[k], start[k]) for k in convs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seg_maps": None}, "trains on class maps: give --seg-maps DIR"),
        ({"arch": "ttsr"}, "--seg-maps and --seg-palette are SFT-GAN's"),
        ({"preset": "gan", "patch_size": 40}, "--patch-size 40: the ACD takes patches"),
        ({"scale": 2}, "--scale 2: SFT-GAN super-resolves x4 only"),
        ({"patch_size": 168}, "astronaut.png: smaller than the 168 px training patch"),
        ({"arch": "sftgan-seg", "config": {}, "preset": "gan"}, "--preset is the generator's"),
    ],
)
def test_wrong_options_are_refused_in_one_line(
    data: tuple[Path, Path], vgg_file: Path, tmp_path: Path, change: dict, message: str
) -> None:
    opts = options(data, tmp_path / "run", steps=1, vgg=str(vgg_file), **change)
    with pytest.raises(TTSRError, match=message.replace("(", r"\(")):
        train(opts)


def test_bad_maps_are_reported_by_file(data: tuple[Path, Path], tmp_path: Path) -> None:
    """A photo without a map fails before any step, naming the photo, in one line and no
    traceback from the command line; a map of another size names the map and both sizes."""
    photos, maps = data
    partial = tmp_path / "maps"
    partial.mkdir()
    for name in list(PHOTOS)[1:]:
        (partial / f"{name}.png").write_bytes((maps / f"{name}.png").read_bytes())
    result = run_cli(
        *("train", "--arch", "sftgan", "--config", "tiny", "--data", photos, "--steps", "1"),
        *("--patch-size", "32", "--seg-maps", partial, "--out", tmp_path / "a"),
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "astronaut.png: no prior map astronaut.npy or .png in" in result.stderr
    assert not (tmp_path / "a" / "checkpoints").exists()
    save_png(partial / "astronaut.png", np.zeros((50, 60), np.uint8))
    opts = options((photos, partial), tmp_path / "b", steps=1, batch_size=3)
    with pytest.raises(TTSRError, match=r"the class map is 60x50, but its photo astronaut\.png is"):
        train(opts)
