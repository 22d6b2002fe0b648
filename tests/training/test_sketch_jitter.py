"""Batched sketch and photo augmentation on hand-made drawings."""

from __future__ import annotations

import torch

from training.sketch_jitter import (
    MouseStyle,
    PhotoJitter,
    affine,
    break_lines,
    dilate,
    erode,
    ink_to_model,
    photo_edges,
    repen,
    to_ink,
)


def _square(size: int = 64, low: int = 16, high: int = 48) -> torch.Tensor:
    ink = torch.zeros(1, 1, size, size)
    ink[..., low:high, low:high] = 1.0
    return ink


def test_ink_round_trip_and_model_range() -> None:
    grey = torch.tensor([[[0, 255], [128, 255]]], dtype=torch.uint8)
    ink = to_ink(grey)
    assert ink.shape == (1, 1, 2, 2)
    assert torch.allclose(ink[0, 0], torch.tensor([[1.0, 0.0], [1 - 128 / 255, 0.0]]))
    model_input = ink_to_model(ink)
    assert model_input.shape == (1, 3, 2, 2)
    assert float(model_input[0, 0, 0, 0]) == -1.0 and float(model_input[0, 0, 0, 1]) == 1.0


def test_dilate_and_erode_move_the_border_by_half_the_size() -> None:
    square = _square()
    assert float(dilate(square, 3).sum()) == 34 * 34
    assert float(erode(square, 3).sum()) == 30 * 30
    assert torch.equal(dilate(square, 1), square)


def test_repen_draws_the_outline_of_a_filled_shape() -> None:
    outline = repen(_square(), pen=3)
    # The filled square becomes a ring: its centre is paper, its border ink.
    assert float(outline[0, 0, 32, 32]) == 0.0
    assert float(outline[0, 0, 16, 32]) == 1.0 and float(outline[0, 0, 47, 32]) == 1.0
    # Ring of the 1-px outline (32x32 minus 30x30), thickened by 1 px on both sides.
    assert float(outline.sum()) == 34 * 34 - 28 * 28


def test_affine_with_no_change_is_the_identity() -> None:
    generator = torch.Generator().manual_seed(0)
    square = _square()
    same = affine(square, generator, rotate_deg=0.0, scale=(1.0, 1.0), aspect=0.0, shift=0.0)
    assert torch.allclose(same, square, atol=1e-5)


def test_affine_scale_shrinks_the_ink() -> None:
    generator = torch.Generator().manual_seed(0)
    smaller = affine(_square(), generator, rotate_deg=0.0, scale=(0.5, 0.5), aspect=0.0, shift=0.0)
    assert abs(float(smaller.sum()) - 16 * 16) < 8


def test_break_lines_removes_whole_cells() -> None:
    generator = torch.Generator().manual_seed(3)
    ink = torch.ones(2, 1, 56, 56)
    broken = break_lines(ink, generator, keep=0.5, cells=28)
    assert set(broken.unique().tolist()) <= {0.0, 1.0}
    cells = broken[:, :, ::2, ::2]
    assert torch.equal(broken, cells.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert 0.3 < float(broken.mean()) < 0.7


def test_mouse_style_is_seeded_and_keeps_shape_and_range() -> None:
    grey = torch.full((6, 224, 224), 255, dtype=torch.uint8)
    grey[:, 60:160, 100:110] = 0
    first = MouseStyle()(grey, torch.Generator().manual_seed(5))
    again = MouseStyle()(grey, torch.Generator().manual_seed(5))
    assert first.shape == (6, 3, 224, 224)
    assert torch.equal(first, again)
    assert float(first.min()) >= -1.0 and float(first.max()) <= 1.0
    assert (first < 0).any(dim=(1, 2, 3)).all()  # no drawing is wiped out


def test_photo_jitter_range_and_identity_when_off() -> None:
    photos = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    off = PhotoJitter(p_affine=0.0, brightness=0.0, contrast=0.0)(photos, torch.Generator().manual_seed(0))
    assert torch.allclose(off, photos.float() / 127.5 - 1.0, atol=1e-6)
    on = PhotoJitter()(photos, torch.Generator().manual_seed(0))
    assert float(on.min()) >= -1.0 and float(on.max()) <= 1.0


def _flag(size: int = 64) -> torch.Tensor:
    """White paper, a red square 16..47 holding a blue square 24..39: uint8 RGB [1, 3, H, W]."""
    photo = torch.full((1, 3, size, size), 255, dtype=torch.uint8)
    photo[0, :, 16:48, 16:48] = torch.tensor([220, 30, 30], dtype=torch.uint8).view(3, 1, 1)
    photo[0, :, 24:40, 24:40] = torch.tensor([30, 30, 220], dtype=torch.uint8).view(3, 1, 1)
    return photo


def test_photo_edges_draw_the_outline_and_optionally_the_colour_borders() -> None:
    photo = _flag().expand(2, -1, -1, -1)
    drawn = photo_edges(photo, torch.tensor([True, False]))
    assert drawn.shape == (2, 64, 64) and drawn.dtype == torch.uint8
    ink = drawn < 128
    # The shape's border (the red square's edge, 3 px wide around row / column 16 and 47).
    for lines in ink:
        assert lines[16, 20:44].all() and lines[47, 20:44].all() and lines[20:44, 16].all()
        assert not lines[:14].any() and not lines[50:].any()  # paper stays blank
        assert not lines[30, 30]  # inside the colour regions: no ink
    outline, borders = ink
    # The inner square's edge only where the colour borders are asked for.
    assert not outline[24, 26:38].any() and not outline[26:38, 39].any()
    assert borders[24, 26:38].all() and borders[26:38, 39].all()


def test_photo_edges_of_a_blank_picture_are_blank() -> None:
    blank = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    assert (photo_edges(blank, torch.tensor([False])) == 255).all()
