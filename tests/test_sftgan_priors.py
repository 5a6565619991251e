"""SFT-GAN priors given as files (``ttsr upscale --seg-maps``): the authors' own condition
gives their pixels, every format of the same segmentation gives the same image, and bad maps
are one line each while a batch goes on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import require_sftgan_fixture, run_cli, sample_image, save_png
from ttsr_cli import archs
from ttsr_cli.archs.sftgan import CLASSES
from ttsr_cli.errors import InputError, TTSRError
from ttsr_cli.priors import PALETTE, PriorMaps, read_palette

LR_SIZE = (30, 22)  # (w, h): even sides
OUT_SIZE = (120, 88)


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random SFT-GAN generator: every code path, fast."""
    torch.manual_seed(0)
    config = {"num_blocks": 2, "channels": 16, "cond_channels": 8, "cond_hidden": 16}
    model, _ = archs.family("sftgan").create(config)
    path = tmp_path_factory.mktemp("sft") / "generator.pth"
    torch.save(model.state_dict(), path)
    return path


def labels(size: tuple[int, int] = OUT_SIZE) -> np.ndarray:
    """``[H, W]`` class indices: eight vertical bands, one per class."""
    w, h = size
    return np.repeat((np.arange(w) * len(CLASSES) // w)[None], h, axis=0)


def upscale(generator: Path, photo: Path, out: Path, *extra: str | Path) -> dict:
    result = run_cli("upscale", photo, "-w", generator, "-o", out, "--json", *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["results"][0]


def test_the_authors_condition_as_a_file_gives_their_pixels(tmp_path: Path) -> None:
    """``cond`` of the fixture is the official segmentation's output for ``lr.png``: given as
    an ``.npy``, the generator alone must give the authors' 8-bit image."""
    fixture = require_sftgan_fixture()
    parity = torch.load(fixture / "parity.pt", weights_only=True)
    maps = tmp_path / "cond.npy"
    np.save(maps, parity["inputs"]["cond"][0].numpy())
    out = tmp_path / "sr.png"
    upscale(fixture / "generator_sftgan.pth", fixture / "lr.png", out, "--seg-maps", maps)
    expected = np.asarray(Image.open(fixture / "expected_sftgan.png"))
    off = np.abs(np.asarray(Image.open(out)).astype(np.int16) - expected)
    assert off.max() <= 1 and (off > 0).mean() <= 1e-3


def test_every_format_of_one_segmentation_gives_the_same_image(
    generator: Path, tmp_path: Path
) -> None:
    """One-hot ``.npy`` probabilities, integer ``.npy`` labels, a grey index PNG and a PNG in
    the official palette (one batch, a map per input by stem), one in a user palette, and
    the PNG ``--save-priors`` wrote, read back."""
    photo = sample_image("coffee", LR_SIZE)
    index = labels()
    photos, forms = tmp_path / "photos", tmp_path / "forms"
    photos.mkdir()
    forms.mkdir()
    np.save(forms / "onehot.npy", np.eye(8, dtype=np.float32)[index].transpose(2, 0, 1))
    np.save(forms / "labels.npy", index.astype(np.int32))
    Image.fromarray(index.astype(np.uint8), "L").save(forms / "grey.png")
    Image.fromarray(np.asarray(PALETTE, dtype=np.uint8)[index]).save(forms / "official.png")
    for stem in ("onehot", "labels", "grey", "official"):
        save_png(photos / f"{stem}.png", photo)
    out = tmp_path / "out"
    extra = ["--seg-maps", forms, "--save-priors", tmp_path / "priors"]
    result = run_cli("upscale", photos, "-w", generator, "-o", out, "--json", *extra)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)["results"]
    assert len(records) == 4
    images = {}
    for record in records:
        assert record["classes"] == {name: 0.125 for name in CLASSES}, record["input"]
        images[Path(record["input"]).stem] = np.asarray(Image.open(record["output"]))
    mine = [(30 * k, 255 - 30 * k, 7 * k) for k in range(8)]
    Image.fromarray(np.asarray(mine, dtype=np.uint8)[index]).save(tmp_path / "mine.png")
    palette = tmp_path / "palette.txt"
    lines = [f"{name} {r} {g} {b}" for name, (r, g, b) in zip(CLASSES, mine, strict=True)]
    palette.write_text("# my colours\n" + "\n".join(lines) + "\n", encoding="utf-8")
    extra = ["--seg-maps", tmp_path / "mine.png", "--seg-palette", palette]
    record = upscale(generator, photos / "grey.png", tmp_path / "mine_sr.png", *extra)
    assert record["classes"] == {name: 0.125 for name in CLASSES}
    images["mine"] = np.asarray(Image.open(tmp_path / "mine_sr.png"))
    assert images["onehot"].shape == (*OUT_SIZE[::-1], 3)
    for form, image in images.items():
        assert np.array_equal(image, images["onehot"]), form
    saved = next((tmp_path / "priors").glob("onehot*_segmentation.png"))  # --save-priors'
    again = upscale(generator, photos / "onehot.png", tmp_path / "again.png", "--seg-maps", saved)
    assert again["classes"] == {name: 0.125 for name in CLASSES}
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again.png")), images["onehot"])


def test_an_odd_input_takes_maps_at_four_times_its_size(generator: Path, tmp_path: Path) -> None:
    photo = save_png(tmp_path / "odd.png", sample_image("coffee", (31, 23)))
    np.save(tmp_path / "odd.npy", np.eye(8, dtype=np.float32)[labels((124, 92))].transpose(2, 0, 1))
    upscale(generator, photo, tmp_path / "out.png", "--seg-maps", tmp_path / "odd.npy")
    assert Image.open(tmp_path / "out.png").size == (124, 92)


def test_a_folder_serves_each_input_and_a_bad_map_fails_alone(
    generator: Path, tmp_path: Path
) -> None:
    inputs, maps, out = tmp_path / "in", tmp_path / "maps", tmp_path / "out"
    for folder in (inputs, maps):
        folder.mkdir()
    for stem in ("a", "b", "c", "d"):
        save_png(inputs / f"{stem}.png", sample_image("coffee", LR_SIZE))
    Image.fromarray(labels().astype(np.uint8), "L").save(maps / "a.png")
    Image.fromarray(labels((60, 44)).astype(np.uint8), "L").save(maps / "b.png")  # LR size
    Image.fromarray(np.full((88, 120, 3), 5, np.uint8)).save(maps / "c.png")  # unknown colour
    result = run_cli("upscale", inputs, "-w", generator, "-o", out, "--seg-maps", maps, "--json")
    assert result.returncode == 1, result.stderr
    records = {Path(r["input"]).stem: r for r in json.loads(result.stdout)["results"]}
    assert records["a"]["status"] == "ok" and (out / "a_ttsr.png").exists()
    assert "is 60x44, but the output is 120x88" in records["b"]["error"]
    assert "colour (5, 5, 5) at (0, 0) is not in the palette" in records["c"]["error"]
    assert "no prior map d.npy or .png" in records["d"]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["a_ttsr.png"]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("--seg-maps", "{one}"), "one map for 2 inputs"),
        (("--seg-maps", "{missing}"), "no such file or folder"),
        (("--seg-palette", "{one}"), "add --seg-maps"),
        (("--seg-maps", "{folder}", "--seg-palette", "{bad}"), "line 2 is not 'CLASS R G B'"),
    ],
)
def test_usage_mistakes_are_one_line_before_any_work(
    generator: Path, tmp_path: Path, extra: tuple[str, ...], expected: str
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for stem in ("a", "b"):
        save_png(folder / f"{stem}.png", sample_image("coffee", LR_SIZE))
    one = tmp_path / "one.npy"
    np.save(one, labels().astype(np.int32))
    bad = tmp_path / "bad.txt"
    bad.write_text("sky 0 255 255\nlake 1 2 3\n", encoding="utf-8")
    names = {"one": one, "missing": tmp_path / "nope", "folder": tmp_path, "bad": bad}
    args = [str(a).format(**names) for a in extra]
    result = run_cli("upscale", folder, "-w", generator, "-o", tmp_path / "out", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_seg_maps_for_a_model_without_priors_is_refused(tiny_weights: Path, tmp_path: Path) -> None:
    photo = save_png(tmp_path / "photo.png", sample_image("coffee", (32, 32)))
    np.save(tmp_path / "maps.npy", labels((128, 128)).astype(np.int32))
    args = ("upscale", photo, "-w", tiny_weights, "--seg-maps", tmp_path / "maps.npy")
    result = run_cli(*args, "--ref", photo)
    assert result.returncode == 2 and "--seg-maps: a ttsr model takes no priors" in result.stderr


def test_probabilities_must_be_eight_finite_non_negative_planes(tmp_path: Path) -> None:
    maps = PriorMaps(tmp_path)
    source = tmp_path / "x.png"
    for array, expected in (
        (np.zeros((3, 8, 8), np.float32), "float 8xHxW probabilities or integer HxW"),
        (np.full((8, 8, 8), -1.0, np.float32), "finite and non-negative"),
        (np.full((8, 8, 8), np.nan, np.float32), "finite and non-negative"),
        (np.full((8, 8), 9, np.int64), "class indices must be 0..7"),
    ):
        np.save(tmp_path / "x.npy", array)
        with pytest.raises(InputError, match=expected):
            maps.read(source, (8, 8))


def test_a_folder_falls_back_to_the_network_only_when_it_is_given(tmp_path: Path) -> None:
    source = tmp_path / "photo.png"
    assert PriorMaps(tmp_path, fallback=True).find(source) is None
    with pytest.raises(InputError, match=r"no prior map photo\.npy"):
        PriorMaps(tmp_path).find(source)


def test_a_palette_maps_several_colours_to_a_class(tmp_path: Path) -> None:
    path = tmp_path / "palette.txt"
    path.write_text("sky 0 0 255\nsky 10 10 250  # haze\nwater 0 0 128\n", encoding="utf-8")
    assert read_palette(path) == {(0, 0, 255): 1, (10, 10, 250): 1, (0, 0, 128): 2}
    path.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(TTSRError, match="no colours"):
        read_palette(path)
