"""Reading and writing keep what a photo carries: orientation, profile, depth, alpha, greyness."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from conftest import sample_image
from ttsr_cli.errors import InputError
from ttsr_cli.imageio import ImageData, probe_size, read_image, read_rgb, write_image

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def deep_rgb(width: int = 23, height: int = 17, channels: int = 3) -> np.ndarray:
    """A real photo spread over 16 bits, with values no 8-bit image can hold."""
    photo = sample_image("coffee", (width, height)).astype(np.uint16) * 256 + 97
    if channels == 4:
        ramp = np.linspace(0, 65535, width * height).reshape(height, width)
        photo = np.dstack([photo, ramp.astype(np.uint16)])
    return photo


def test_eight_bit_rgb_is_read_as_pillow_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.fromarray(sample_image("astronaut", (31, 22))).save(path)
    image = read_image(path)
    assert image.bit_depth == 8 and image.alpha is None and not image.greyscale
    assert image.source_format == "PNG"
    assert np.array_equal(image.rgb, np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("suffix", [".png", ".tiff"])
@pytest.mark.parametrize("channels", [3, 4])
def test_sixteen_bit_colour_round_trips_exactly(tmp_path: Path, suffix: str, channels: int) -> None:
    pixels = deep_rgb(channels=channels)
    source = tmp_path / f"deep{suffix}"
    cv2.imwrite(str(source), np.ascontiguousarray(pixels[..., [2, 1, 0, 3][:channels]]))
    image = read_image(source)
    assert image.bit_depth == 16 and image.rgb.dtype == np.uint16
    assert np.array_equal(image.rgb, pixels[..., :3])
    if channels == 4:
        assert np.array_equal(image.alpha, pixels[..., 3])
    copy = tmp_path / f"copy{suffix}"
    write_image(copy, ImageData(image.rgb, image.alpha, 16, SRGB))
    again = read_image(copy)
    assert np.array_equal(again.rgb, image.rgb) and again.bit_depth == 16
    assert again.icc_profile == SRGB
    if channels == 4:
        assert np.array_equal(again.alpha, image.alpha)


def test_sixteen_bit_greyscale_stays_greyscale(tmp_path: Path) -> None:
    grey = deep_rgb()[..., 0]
    source = tmp_path / "grey.png"
    Image.fromarray(grey).save(source)
    image = read_image(source)
    assert image.greyscale and image.bit_depth == 16
    assert np.array_equal(image.rgb[..., 1], grey)
    write_image(tmp_path / "out.png", image)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "I;16"
        assert np.array_equal(np.asarray(out), grey)


def test_greyscale_with_alpha_stays_la(tmp_path: Path) -> None:
    grey = sample_image("camera", (20, 14))[..., 0]
    alpha = np.linspace(0, 255, grey.size).reshape(grey.shape).astype(np.uint8)
    source = tmp_path / "la.png"
    Image.fromarray(np.dstack([grey, alpha])).save(source)
    image = read_image(source)
    assert image.greyscale and np.array_equal(image.alpha, alpha)
    write_image(tmp_path / "out.png", image)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "LA"
        assert np.array_equal(np.asarray(out), np.dstack([grey, alpha]))


def test_palette_images_become_rgb_or_rgba(tmp_path: Path) -> None:
    photo = Image.fromarray(sample_image("chelsea", (24, 16))).quantize(32)
    photo.save(tmp_path / "p.png")
    photo.save(tmp_path / "pt.png", transparency=0)
    plain, clear = read_image(tmp_path / "p.png"), read_image(tmp_path / "pt.png")
    assert plain.alpha is None and clear.alpha is not None
    assert np.array_equal(plain.rgb, np.asarray(photo.convert("RGB")))
    assert np.array_equal(clear.rgb, plain.rgb)
    assert set(np.unique(clear.alpha)) <= {0, 255} and (clear.alpha == 0).any()


def test_cmyk_becomes_rgb_without_its_profile(tmp_path: Path) -> None:
    rgb = Image.fromarray(sample_image("coffee", (32, 24)))
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    image = read_image(tmp_path / "cmyk.jpg")
    assert image.rgb.shape == (24, 32, 3) and image.icc_profile is None
    assert np.abs(image.rgb.astype(int) - np.asarray(rgb).astype(int)).mean() < 12


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_does(tmp_path: Path, orientation: int) -> None:
    photo = Image.fromarray(sample_image("astronaut", (12, 7)))
    exif = photo.getexif()
    exif[0x0112] = orientation
    photo.save(tmp_path / "o.png", exif=exif.tobytes())
    with Image.open(tmp_path / "o.png") as img:
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "o.png").rgb, expected)
    assert probe_size(tmp_path / "o.png") == (expected.shape[1], expected.shape[0])


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tiff"])
def test_icc_profile_is_written_back(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    write_image(path, ImageData(sample_image("coffee", (16, 12)), icc_profile=SRGB))
    with Image.open(path) as img:
        assert img.info.get("icc_profile") == SRGB


def test_jpeg_has_no_alpha_so_transparency_goes_over_white(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    alpha = np.zeros((8, 8), np.uint8)
    write_image(tmp_path / "out.jpg", ImageData(rgb, alpha))
    assert np.asarray(Image.open(tmp_path / "out.jpg")).min() >= 250


def test_sixteen_bits_are_rounded_for_eight_bit_formats(tmp_path: Path) -> None:
    pixels = deep_rgb()
    write_image(tmp_path / "out.webp", ImageData(pixels, bit_depth=16))
    assert read_image(tmp_path / "out.webp").bit_depth == 8
    write_image(tmp_path / "out.bmp", ImageData(pixels, bit_depth=16))
    assert np.array_equal(read_rgb(tmp_path / "out.bmp"), np.rint(pixels / 257).astype(np.uint8))


def test_problems_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(InputError, match=r"empty\.png: not an image"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(InputError, match=r"link\.png: dangling symbolic link"):
        read_image(tmp_path / "link.png")
    with pytest.raises(InputError, match="is a directory"):
        read_image(tmp_path)
