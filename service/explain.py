"""Reading a sketch-photo cosine kernel: top matched anchor pairs and a side-by-side drawing.

The kernel K [A, A] (A = 49) holds cos(sketch anchor i, photo anchor j); anchor i sits at
(row, col) = divmod(i, 7) on the 7x7 grid of the model's downsampled token map.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

PANEL_SIZE = 224  # each image is drawn at the model's input size, so grid cells are exact
GAP = 32
PNG_SIZE = (2 * PANEL_SIZE + GAP, PANEL_SIZE)  # (width, height) of every rendered explanation
PAIR_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40))


@dataclass(frozen=True)
class MatchedPair:
    """One sketch anchor and its best-matching photo anchor."""

    sketch_cell: tuple[int, int]  # (row, col) on the anchor grid
    photo_cell: tuple[int, int]
    score: float


def grid_side(kernel: np.ndarray) -> int:
    """7 for a [49, 49] kernel; a kernel that is not square over a square grid is a model bug."""
    anchors = kernel.shape[0]
    side = math.isqrt(anchors)
    if kernel.ndim != 2 or kernel.shape[1] != anchors or side * side != anchors:
        raise ValueError(f"expected a [A, A] kernel over a square grid, got {tuple(kernel.shape)}")
    return side


def top_pairs(kernel: np.ndarray, count: int) -> list[MatchedPair]:
    """For each sketch anchor its best photo anchor (row argmax), the `count` strongest, best first."""
    side = grid_side(kernel)
    best = kernel.argmax(axis=1)
    scores = kernel[np.arange(kernel.shape[0]), best]
    order = np.argsort(-scores, kind="stable")[:count]
    return [MatchedPair(divmod(int(i), side), divmod(int(best[i]), side), float(scores[i])) for i in order]


def render_pairs(sketch: Image.Image, photo: Image.Image, pairs: list[MatchedPair], side: int) -> bytes:
    """PNG bytes of size PNG_SIZE: sketch left, photo right, matched cells boxed and linked."""
    canvas = Image.new("RGB", PNG_SIZE, (255, 255, 255))
    canvas.paste(sketch.convert("RGB").resize((PANEL_SIZE, PANEL_SIZE)), (0, 0))
    canvas.paste(photo.convert("RGB").resize((PANEL_SIZE, PANEL_SIZE)), (PANEL_SIZE + GAP, 0))
    draw = ImageDraw.Draw(canvas)
    cell = PANEL_SIZE / side
    for number, pair in enumerate(pairs):
        colour = PAIR_COLOURS[number % len(PAIR_COLOURS)]
        sketch_box = _cell_box(pair.sketch_cell, cell, 0)
        photo_box = _cell_box(pair.photo_cell, cell, PANEL_SIZE + GAP)
        draw.rectangle(sketch_box, outline=colour, width=2)
        draw.rectangle(photo_box, outline=colour, width=2)
        draw.line([_centre(sketch_box), _centre(photo_box)], fill=colour, width=2)
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _cell_box(cell: tuple[int, int], size: float, x_offset: int) -> tuple[float, float, float, float]:
    row, col = cell
    return (x_offset + col * size, row * size, x_offset + (col + 1) * size - 1, (row + 1) * size - 1)


def _centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
