"""Preprocessing as the original's test mode, and the array-level upscaler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import sample_image
from ttsr_cli.errors import InputError
from ttsr_cli.pipeline import Upscaler, reference_pair, to_image, to_tensor


def test_tensor_round_trip_is_lossless() -> None:
    image = sample_image("chelsea", (31, 17))
    t = to_tensor(image, torch.device("cpu"))
    assert t.shape == (1, 3, 17, 31) and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(to_image(t), image)


def test_reference_is_cropped_to_multiples_of_four_and_down_up_with_pillow() -> None:
    ref = sample_image("coffee", (103, 66))
    cropped, down_up = reference_pair(ref)
    assert cropped.shape == down_up.shape == (64, 100, 3)
    assert np.array_equal(cropped, ref[:64, :100])
    small = Image.fromarray(cropped).resize((25, 16), Image.BICUBIC)
    assert np.array_equal(down_up, np.asarray(small.resize((100, 64), Image.BICUBIC)))


def test_reference_smaller_than_one_patch_is_refused() -> None:
    with pytest.raises(InputError, match="at least 4x4"):
        reference_pair(np.zeros((3, 50, 3), np.uint8))


def test_self_reference_equals_the_upsampled_input_as_reference(tiny_model) -> None:
    upscaler = Upscaler(tiny_model, torch.device("cpu"))
    lr = sample_image("astronaut", (21, 18))
    lrsr = np.asarray(Image.fromarray(lr).resize((84, 72), Image.BICUBIC))
    explicit = upscaler.upscale(lr, [upscaler.encode_reference(lrsr)])
    assert np.array_equal(upscaler.upscale(lr), explicit)
    assert explicit.shape == (72, 84, 3) and explicit.dtype == np.uint8


def test_encoded_reference_is_reusable_across_images(tiny_model) -> None:
    upscaler = Upscaler(tiny_model, torch.device("cpu"), search_budget=8192)
    ref = upscaler.encode_reference(sample_image("coffee", (64, 48)))
    first = upscaler.upscale(sample_image("astronaut", (16, 12)), [ref])
    upscaler.upscale(sample_image("chelsea", (20, 10)), [ref])
    assert np.array_equal(upscaler.upscale(sample_image("astronaut", (16, 12)), [ref]), first)
