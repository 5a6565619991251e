"""Benchmark datasets: LR made as the original makes it, layouts, references per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_cufed5, sample_image, save_png
from ttsr_cli.data import (
    REGISTRY,
    dataset_info,
    dataset_root,
    list_samples,
    parse_ref_level,
)
from ttsr_cli.errors import InputError, TTSRError
from ttsr_cli.pixels import degrade


def test_degrade_crops_to_multiples_of_4_and_uses_pillow_bicubic() -> None:
    hr = sample_image("astronaut", (103, 66))
    cropped, lr, baseline = degrade(hr, 4)
    assert cropped.shape == (64, 100, 3)
    np.testing.assert_array_equal(cropped, hr[:64, :100])  # top-left crop
    expected_lr = Image.fromarray(hr[:64, :100]).resize((25, 16), Image.BICUBIC)
    np.testing.assert_array_equal(lr, np.asarray(expected_lr))
    np.testing.assert_array_equal(
        baseline, np.asarray(expected_lr.resize((100, 64), Image.BICUBIC))
    )


def test_degrade_refuses_images_smaller_than_the_scale() -> None:
    with pytest.raises(InputError, match="at least 4x4"):
        degrade(np.zeros((3, 10, 3), np.uint8), 4)


def test_registry_names_and_policies() -> None:
    assert set(REGISTRY) == {
        "set5", "set14", "bsd68", "bsd100", "urban100", "manga109", "sun80", "cufed5"
    }  # fmt: skip
    assert REGISTRY["urban100"].references == "self"
    assert REGISTRY["cufed5"].references == "cufed5"
    assert dataset_info("Set5", None) is REGISTRY["set5"]
    assert dataset_info("my-photos", Path(".")).references == "self"
    with pytest.raises(TTSRError, match="unknown dataset 'my-photos'"):
        dataset_info("my-photos", None)


def test_folder_lists_images_only_in_name_order(tmp_path: Path) -> None:
    for name in ("b.png", "a.JPG", ".hidden.png"):
        save_png(tmp_path / name, sample_image("coffee", (16, 16)))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.png").mkdir()
    samples = list_samples(dataset_info("x", tmp_path), tmp_path)
    assert [s.name for s in samples] == ["a.JPG", "b.png"]
    assert all(s.references == () for s in samples)  # self-reference


def test_empty_or_missing_folder_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(TTSRError, match="no set5 images"):
        list_samples(REGISTRY["set5"], tmp_path)
    with pytest.raises(TTSRError, match="dataset folder not found"):
        dataset_root(REGISTRY["set5"], tmp_path / "absent")


def test_cufed5_pairs_inputs_with_the_chosen_level(tmp_path: Path) -> None:
    root = make_cufed5(tmp_path)
    samples = list_samples(REGISTRY["cufed5"], root, "3")
    assert [(s.name, s.hr.name) for s in samples] == [("000", "000_0.png"), ("001", "001_0.png")]
    assert [r.name for r in samples[0].references] == ["000_3.png"]
    everything = list_samples(REGISTRY["cufed5"], root, "all")
    assert [r.name for r in everything[1].references] == [f"001_{k}.png" for k in range(1, 6)]


def test_cufed5_missing_reference_is_a_problem_of_that_image(tmp_path: Path) -> None:
    root = make_cufed5(tmp_path)
    (root / "001_4.png").unlink()
    samples = list_samples(REGISTRY["cufed5"], root, "all")
    assert samples[0].problem is None
    assert samples[1].problem is not None and "level 4" in samples[1].problem
    assert list_samples(REGISTRY["cufed5"], root, "1")[1].problem is None


@pytest.mark.parametrize("text", ["0", "6", "best", ""])
def test_bad_reference_levels(text: str) -> None:
    with pytest.raises(TTSRError, match="--ref-level"):
        parse_ref_level(text)


def test_sun80_sun_hays_layout(tmp_path: Path) -> None:
    gt, refs = tmp_path / "Sun_Hays_SR_groundtruth", tmp_path / "Sun_Hays_SR_scenematches"
    gt.mkdir()
    save_png(gt / "abbey.jpg", sample_image("coffee", (16, 16)))
    save_png(gt / "barn.jpg", sample_image("coffee", (16, 16)))
    (refs / "abbey").mkdir(parents=True)
    for k in (2, 1, 3):
        save_png(refs / "abbey" / f"m{k}.jpg", sample_image("astronaut", (16, 16)))
    first, second = list_samples(REGISTRY["sun80"], tmp_path)
    assert [r.name for r in first.references] == ["m1.jpg"]
    assert second.references == () and second.problem is None  # none found: self-reference
    assert len(list_samples(REGISTRY["sun80"], tmp_path, "all")[0].references) == 3
    beyond = list_samples(REGISTRY["sun80"], tmp_path, "5")[0]
    assert beyond.problem == "has 3 references, no #5"


def test_sun80_refs_folder_and_ref_suffix(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "b_ref1.jpg", "b_ref2.jpg", "oil_refinery.jpg"):
        save_png(tmp_path / name, sample_image("coffee", (16, 16)))
    (tmp_path / "refs" / "a").mkdir(parents=True)
    save_png(tmp_path / "refs" / "a" / "x.png", sample_image("coffee", (16, 16)))
    a, b, oil = list_samples(REGISTRY["sun80"], tmp_path, "all")
    assert [r.name for r in a.references] == ["x.png"]
    assert [r.name for r in b.references] == ["b_ref1.jpg", "b_ref2.jpg"]
    assert oil.name == "oil_refinery.jpg" and oil.references == ()


def test_shared_sun80_has_no_references_so_it_is_self_referenced() -> None:
    root = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "Sun80"
    if not root.is_dir():
        pytest.skip(f"Sun80 not found at {root} (../shared is absent)")
    samples = list_samples(REGISTRY["sun80"], root)
    assert len(samples) == 80
    assert all(s.references == () and s.problem is None for s in samples)
