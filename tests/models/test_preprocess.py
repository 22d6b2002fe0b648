"""Preprocessing against hand-made images whose expected output is worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models import preprocess


def white(height: int, width: int) -> np.ndarray:
    return np.full((height, width, 3), 255, dtype=np.uint8)


def test_photo_is_a_plain_resize_and_half_normalisation() -> None:
    array = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    expected = np.asarray(image.resize((224, 224)), dtype=np.float32) / 255.0
    tensor = preprocess.photo(image)
    assert tensor.shape == (3, 224, 224)
    np.testing.assert_allclose(tensor.permute(1, 2, 0).numpy(), (expected - 0.5) / 0.5, atol=1e-6)


def test_sketch_crop_uses_ink_bbox_with_exclusive_padded_end() -> None:
    array = white(100, 120)
    array[40:60, 30:50] = 0  # ink rows 40..59, cols 30..49
    cropped = preprocess.crop_to_ink(array)
    # rows 30 .. 59+10 exclusive = 30..68 -> 39 rows; cols 20..58 -> 39 cols
    assert cropped.shape == (39, 39, 3)
    assert (cropped[:10] == 255).all() and (cropped[10:30, 10:30] == 0).all()


def test_sketch_threshold_counts_grey_up_to_300_as_ink() -> None:
    array = white(50, 50)
    array[10, 10] = (100, 100, 100)  # sum 300: ink
    array[40, 40] = (101, 100, 100)  # sum 301: paper
    cropped = preprocess.crop_to_ink(array, padding=1)
    # Only (10, 10) is ink: rows and cols 9..10 (end exclusive at 11) -> 2 x 2.
    assert cropped.shape == (2, 2, 3)
    assert cropped[1, 1].tolist() == [100, 100, 100]


def test_sketch_resize_keeps_aspect_and_pads_with_white() -> None:
    array = white(200, 100)
    array[20:180, 45:55] = 0  # a tall bar: the crop is 180 x 30
    tensor = preprocess.sketch(Image.fromarray(array))
    assert tensor.shape == (3, 224, 224)
    assert tensor.min() >= -1 and tensor.max() <= 1
    image = tensor[0].numpy()
    # The crop (rows 10..189, cols 35..64) is 180 x 30 -> 224 x int(224 / 6) = 37 wide, centred.
    left = (224 - 37) // 2
    assert np.allclose(image[:, :left], 1.0) and np.allclose(image[:, left + 37 :], 1.0)
    assert image[112, 112] == pytest.approx(-1.0)  # the bar's centre stays black


def test_resize_matches_half_pixel_bilinear_by_hand() -> None:
    # 1 x 2 image [0, 255] upsampled to 1 x 4: sample points x = (i + 0.5) / 2 - 0.5 = -.25, .25, .75, 1.25
    array = np.array([[[0] * 3, [255] * 3]], dtype=np.uint8)
    resized = preprocess._resize_bilinear(array, 4, 1)[0, :, 0]
    # clamped at the edges: 0, 0.25*255, 0.75*255, 255
    assert resized.tolist() == [0, round(0.25 * 255), round(0.75 * 255), 255]


def test_alpha_is_composited_onto_white() -> None:
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)  # fully transparent black
    rgba[10:30, 18:22] = (0, 0, 0, 255)  # an opaque black stroke
    tensor = preprocess.sketch(Image.fromarray(rgba, mode="RGBA"))
    assert tensor[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    assert tensor.min() == -1.0


def test_blank_sketch_is_kept_whole() -> None:
    tensor = preprocess.sketch(Image.fromarray(white(30, 60)))
    assert torch.equal(tensor, torch.ones(3, 224, 224))


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    array = np.full((20, 20), 65535, dtype=np.uint16)
    array[5:15, 5:15] = 0
    image = Image.fromarray(array)
    tensor = preprocess.photo(image)
    assert tensor.max() == 1.0 and tensor.min() == -1.0
