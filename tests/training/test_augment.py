"""Sketch augmentations on line drawings made by the tests; ink is counted independently with numpy."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw

from training.augment import STEPS, SketchAugment, to_ink


def drawing(size: tuple[int, int] = (224, 224), width: int = 6, mode: str = "RGB") -> Image.Image:
    """A face-like line drawing: black strokes of ``width`` px on white (or on transparency for RGBA)."""
    background = (0, 0, 0, 0) if mode == "RGBA" else "white"
    image = Image.new(mode, size, background)
    draw = ImageDraw.Draw(image)
    w, h = size
    ink = (0, 0, 0, 255) if mode == "RGBA" else "black"
    draw.ellipse((0.2 * w, 0.2 * h, 0.8 * w, 0.8 * h), outline=ink, width=width)
    draw.line((0.35 * w, 0.6 * h, 0.65 * w, 0.6 * h), fill=ink, width=width)
    draw.ellipse((0.38 * w, 0.38 * h, 0.42 * w, 0.44 * h), fill=ink)
    draw.ellipse((0.58 * w, 0.38 * h, 0.62 * w, 0.44 * h), fill=ink)
    return image


def ink(image: Image.Image) -> int:
    """Dark pixels, counted on the luminance (independent of the module's own helpers)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    luminance = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return int((luminance < 128).sum())


def only(step: str, **options: object) -> SketchAugment:
    return SketchAugment(seed=0, p={step: 1.0}, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
@pytest.mark.parametrize("size", [(224, 224), (160, 200)])
def test_output_is_rgb_of_the_same_size_with_ink(mode: str, size: tuple[int, int]) -> None:
    source = drawing(size, mode=mode)
    augment = SketchAugment(seed=1, p=1.0)
    for _ in range(5):
        result = augment(source)
        assert result.mode == "RGB" and result.size == size
        assert ink(result) > 0.2 * ink(drawing(size))
        assert result.getpixel((0, 0)) == (255, 255, 255)  # the corner stays white paper


def test_deterministic_for_a_seed_or_a_generator() -> None:
    source = drawing()
    assert np.array_equal(np.asarray(SketchAugment(seed=3)(source)), np.asarray(SketchAugment(seed=3)(source)))
    augment = SketchAugment(p=0.8)
    a = augment(source, rng=random.Random(11))
    b = augment(source, rng=random.Random(11))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    # Successive calls on one instance draw fresh randomness; different seeds give different images.
    series = SketchAugment(seed=3, p=1.0)
    assert not np.array_equal(np.asarray(series(source)), np.asarray(series(source)))
    outputs = {SketchAugment(seed=seed, p=1.0)(source).tobytes() for seed in range(6)}
    assert len(outputs) == 6


def test_differs_from_the_input_and_keeps_ink_across_seeds() -> None:
    source = drawing()
    for seed in range(25):
        result = SketchAugment(seed=seed, p=1.0)(source)
        assert not np.array_equal(np.asarray(result), np.asarray(source))
        assert 0.15 * ink(source) < ink(result) < 4 * ink(source)


def test_nothing_runs_at_probability_zero() -> None:
    source = drawing()
    assert np.array_equal(np.asarray(SketchAugment(seed=0, p=0.0)(source)), np.asarray(source))


def test_ink_conversion_handles_transparency_and_inverted_drawings() -> None:
    transparent = drawing(mode="RGBA")
    assert np.array_equal(np.asarray(to_ink(transparent)), np.asarray(drawing().convert("L")))
    inverted = Image.eval(drawing(), lambda value: 255 - value)  # white chalk on a blackboard
    assert np.array_equal(np.asarray(to_ink(inverted)), np.asarray(drawing().convert("L")))


def test_stroke_width_thickens_and_thins() -> None:
    source = drawing(width=8)
    thicker = only("stroke_width", stroke_width=(3, 3))(source)
    thinner = only("stroke_width", stroke_width=(-2, -2))(source)
    assert ink(thicker) > 1.3 * ink(source)
    assert ink(thinner) < 0.8 * ink(source)
    # Thickening only adds ink around the strokes: every original ink pixel stays ink.
    original = np.asarray(source.convert("L")) < 128
    assert (np.asarray(thicker.convert("L"))[original] < 128).all()


def test_partial_strokes_erase_some_ink_but_not_too_much() -> None:
    source = drawing()
    for seed in range(10):
        augment = SketchAugment(seed=seed, p={"partial": 1.0}, erase_count=(2, 3), max_erased=0.3)
        result = augment(source)
        kept = ink(result) / ink(source)
        assert 0.7 - 0.02 < kept < 1.0  # the 2% allows for anti-aliased rims counted either way
        # Erasing only whitens: no new ink appears.
        assert not ((np.asarray(result.convert("L")) < 128) & (np.asarray(source.convert("L")) >= 128)).any()


def test_jitter_moves_strokes_a_little() -> None:
    source = drawing()
    result = only("jitter", jitter_amplitude=0.03)(source)
    assert not np.array_equal(np.asarray(result), np.asarray(source))
    assert 0.8 < ink(result) / ink(source) < 1.25
    still = only("jitter", jitter_amplitude=0.0)(source)
    assert np.abs(np.asarray(still, dtype=int) - np.asarray(source, dtype=int)).max() <= 1


def test_affine_transform_matches_the_parameters() -> None:
    source = drawing()
    identity = only("affine", rotation=0.0, scale=(1.0, 1.0), translation=0.0)(source)
    assert np.abs(np.asarray(identity, dtype=int) - np.asarray(source, dtype=int)).max() <= 1

    def ink_centre(image: Image.Image) -> np.ndarray:
        rows, cols = np.nonzero(np.asarray(image.convert("L")) < 128)
        return np.array([cols.mean(), rows.mean()])

    # A pure shift of 10% moves the ink's centre by at most 10% of the side on each axis, and does move it.
    shifted = only("affine", rotation=0.0, scale=(1.0, 1.0), translation=0.1)(source)
    moved = ink_centre(shifted) - ink_centre(source)
    assert np.all(np.abs(moved) <= 0.1 * 224 + 1) and np.abs(moved).max() > 0.5
    # Shrinking to 80% leaves about 0.8x the ink length (strokes keep their width, lines get shorter).
    small = only("affine", rotation=0.0, scale=(0.8, 0.8), translation=0.0)(source)
    assert 0.6 < ink(small) / ink(source) < 0.95


def test_mouse_lines_are_pure_black_and_uniformly_thin() -> None:
    source = drawing(width=12)
    result = only("mouse", mouse_width=3)(source)
    values = set(np.unique(np.asarray(result.convert("L"))).tolist())
    assert values <= {0, 255}
    # The 12 px ring becomes a 3 px line: measure it across the ring's left side on the middle row.
    row = np.asarray(result.convert("L"))[112]
    left_stroke = np.nonzero(row[:112] < 128)[0]
    assert 2 <= len(left_stroke) <= 4
    assert np.all(np.diff(left_stroke) == 1)  # one line, not the two edges of the old stroke


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown"):
        SketchAugment(p={"blur": 0.5})
    with pytest.raises(ValueError, match="probabilities"):
        SketchAugment(p=1.5)
    assert set(SketchAugment(p=0.3).probabilities()) == set(STEPS)
