"""Batched tensor augmentations that turn clean line art into what a mouse draws.

All functions work on whole batches and draw from a ``torch.Generator``, so a step's augmentation
is a function of the generator state (saved with the run for resumption).

Sketches are handled as *ink* (1 on a stroke, 0 on paper) [B, 1, H, W] float, so that morphology is
max-pooling: ``dilate`` thickens strokes, ``erode`` thins them. What each transform imitates:

- ``repen``: the outline of the ink drawn again with one round pen (a mouse drawing has strokes of
  one width and no filled areas; OpenMoji's line art fills pupils, hair and shadows);
- ``simplify``: detail lost (the drawing blurred at a quarter of the size and thresholded again);
- ``stroke_width``: thicker or thinner strokes;
- ``break_lines``: gaps where the pen lifted;
- ``affine``: a drawing a little rotated, squashed or off-centre within its crop.

``photo_edges`` makes further sketches from the flat colour emoji themselves: the outline of the
picture's shape, with or without the borders between its colour regions. A mouse drawing of an apple
is mostly its outline and a stalk, far from OpenMoji's line art with every highlight drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def to_ink(grey: torch.Tensor) -> torch.Tensor:
    """uint8 grey [B, H, W] (white paper) -> ink [B, 1, H, W] float in [0, 1]."""
    return 1.0 - grey.unsqueeze(1).float() / 255.0


def ink_to_model(ink: torch.Tensor) -> torch.Tensor:
    """ink [B, 1, H, W] -> the model's sketch input [B, 3, H, W] in [-1, 1] (mean = std = 0.5)."""
    return (1.0 - 2.0 * ink.clamp(0.0, 1.0)).expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)


def photo_to_model(photos: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [B, 3, H, W] -> the model's photo input [B, 3, H, W] in [-1, 1]."""
    return (photos.float() / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)


def dilate(ink: torch.Tensor, size: int) -> torch.Tensor:
    return F.max_pool2d(ink, size, stride=1, padding=size // 2) if size > 1 else ink


def erode(ink: torch.Tensor, size: int) -> torch.Tensor:
    return -F.max_pool2d(-ink, size, stride=1, padding=size // 2) if size > 1 else ink


def _pick(batch: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """Row positions [R] a transform applies to, each with probability p."""
    return torch.nonzero(torch.rand(batch, generator=generator) < p).squeeze(1)


def repen(ink: torch.Tensor, pen: int) -> torch.Tensor:
    """The outline of the binarised ink, drawn with a square pen of side ``pen``: [B, 1, H, W]."""
    solid = (ink > 0.5).float()
    outline = solid - erode(solid, 3)
    return dilate(outline, pen)


def simplify(ink: torch.Tensor, factor: int = 4, threshold: float = 0.3) -> torch.Tensor:
    """Blur away detail at 1/``factor`` of the size, threshold again: [B, 1, H, W]."""
    height, width = ink.shape[-2:]
    small = F.avg_pool2d(ink, factor)
    return (F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False) > threshold).float()


def break_lines(ink: torch.Tensor, generator: torch.Generator, keep: float = 0.8, cells: int = 28) -> torch.Tensor:
    """Zero the ink in a random ``1 - keep`` share of a ``cells`` x ``cells`` grid: [B, 1, H, W]."""
    batch = ink.shape[0]
    mask = (torch.rand(batch, 1, cells, cells, generator=generator) < keep).float()
    return ink * F.interpolate(mask, size=ink.shape[-2:], mode="nearest")


def photo_edges(photos: torch.Tensor, outline_only: torch.Tensor, paper: int = 245,
                colour_step: float = 0.2) -> torch.Tensor:
    """Line drawings of flat colour pictures: uint8 RGB [B, 3, H, W] (white paper) -> uint8 grey [B, H, W].

    Every row gets the outline of its shape (the pixels with any channel below ``paper``); rows where
    ``outline_only`` [B] bool is false also get the borders between colour regions, where a channel
    changes by more than ``colour_step`` (of 1) to a neighbour. Lines are about 3 px wide; the pen of
    the drawing is the sketch augmentation's business.
    """
    images = photos.float() / 255.0
    shape = (images.amin(dim=1, keepdim=True) < paper / 255.0).float()  # [B, 1, H, W]
    lines = shape - erode(shape, 3)  # the shape's inner border, 1 px
    right = (images[..., :, 1:] - images[..., :, :-1]).abs().amax(dim=1, keepdim=True)
    down = (images[..., 1:, :] - images[..., :-1, :]).abs().amax(dim=1, keepdim=True)
    step = torch.zeros_like(shape)
    step[..., :, 1:] = right
    step[..., 1:, :] = torch.maximum(step[..., 1:, :], down)
    borders = dilate((step > colour_step).float() * erode(shape, 3), 3)
    keep_borders = (~outline_only).float().view(-1, 1, 1, 1)
    ink = torch.maximum(dilate(lines, 3), borders * keep_borders)
    return ((1.0 - ink.clamp(0, 1)) * 255).round().to(torch.uint8).squeeze(1)


def affine(
    images: torch.Tensor,
    generator: torch.Generator,
    rotate_deg: float,
    scale: tuple[float, float],
    aspect: float,
    shift: float,
    fill_zero: bool = True,
) -> torch.Tensor:
    """Random rotation, per-axis scale and shift of each image [B, C, H, W]; outside is 0 (no ink).

    For photos pass ``fill_zero=False``: outside is then white (the images are in [0, 1] there).
    """
    batch = images.shape[0]
    angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(rotate_deg)
    zoom = scale[0] + torch.rand(batch, generator=generator) * (scale[1] - scale[0])
    stretch = torch.exp((torch.rand(batch, generator=generator) * 2 - 1) * math.log1p(aspect))
    sx, sy = zoom * stretch.sqrt(), zoom / stretch.sqrt()
    tx, ty = ((torch.rand(2, batch, generator=generator) * 2 - 1) * shift).unbind(0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output to input coordinates: the inverse of "scale by s" is 1 / s.
    theta = torch.stack(
        [torch.stack([cos / sx, -sin / sx, tx], 1), torch.stack([sin / sy, cos / sy, ty], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    if fill_zero:
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return 1.0 - F.grid_sample(1.0 - images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class MouseStyle:
    """Probabilities and ranges of the sketch augmentation (each transform on its own rows).

    ``pens`` are the square pen sides of ``repen`` in pixels at 224 px: the page's 14 px round pen on
    its 448 px canvas is 7 px here.
    """

    p_repen: float = 0.35
    pens: tuple[int, ...] = (3, 5, 7)
    p_simplify: float = 0.2
    p_width: float = 0.4
    p_break: float = 0.25
    p_affine: float = 0.8
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.8, 1.05)
    aspect: float = 0.15
    shift: float = 0.06

    def __call__(self, grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 grey sketches [B, H, W] -> model input [B, 3, H, W]."""
        ink = to_ink(grey)
        batch = ink.shape[0]
        # Each transform runs on its own rows only (the others are not computed and thrown away).
        pen = self.pens[int(torch.randint(len(self.pens), (1,), generator=generator))]
        rows = _pick(batch, self.p_repen, generator)
        if len(rows):
            ink[rows] = repen(ink[rows], pen)
        rows = _pick(batch, self.p_simplify, generator)
        if len(rows):
            ink[rows] = simplify(ink[rows])
        rows = _pick(batch, self.p_width, generator)
        thicker = torch.rand(len(rows), generator=generator) < 0.6
        if len(rows):
            chosen = ink[rows]
            changed = torch.where(thicker.view(-1, 1, 1, 1), dilate(chosen, 3), erode(chosen, 3))
            # Thinning must not wipe out a drawing of hairlines: keep the original where it would.
            kept = changed.flatten(1).sum(1) > 0.2 * chosen.flatten(1).sum(1)
            ink[rows] = torch.where(kept.view(-1, 1, 1, 1), changed, chosen)
        rows = _pick(batch, self.p_break, generator)
        if len(rows):
            ink[rows] = break_lines(ink[rows], generator)
        rows = _pick(batch, self.p_affine, generator)
        if len(rows):
            ink[rows] = affine(ink[rows], generator, self.rotate_deg, self.scale, self.aspect, self.shift)
        return ink_to_model(ink)


@dataclass(frozen=True)
class PhotoJitter:
    """Mild shifts and scales of the gallery images, and brightness / contrast changes."""

    p_affine: float = 0.5
    scale: tuple[float, float] = (0.9, 1.05)
    shift: float = 0.04
    brightness: float = 0.1
    contrast: float = 0.1

    def __call__(self, photos: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 RGB [B, 3, H, W] -> model input [B, 3, H, W]."""
        images = photos.float() / 255.0
        batch = images.shape[0]
        rows = _pick(batch, self.p_affine, generator)
        if len(rows):
            images[rows] = affine(images[rows], generator, 0.0, self.scale, 0.0, self.shift, fill_zero=False)
        gain = 1 + (torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1) * self.contrast
        offset = (torch.rand(batch, 1, 1, 1, generator=generator) * 2 - 1) * self.brightness
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = ((images - mean) * gain + mean + offset).clamp(0, 1)
        return (images * 2 - 1).contiguous(memory_format=torch.channels_last)
