"""PNG pictures of explanations: sketch left, photo (or synthesis) right, PNG_SIZE in all.

Each image is drawn at the model's 224x224 input, so grid cells are exact. Pure drawing: the
functions take images, cell indices and maps already computed by `service.explain`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

PANEL_SIZE = 224  # each image is drawn at the model's input size, so grid cells are exact
GAP = 32
PNG_SIZE = (2 * PANEL_SIZE + GAP, PANEL_SIZE)  # (width, height) of every rendered explanation
PAIR_COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
                (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40))
BOX_COLOUR = (255, 200, 0)

# Colours of a perceptual dark-to-bright ramp (viridis at 0, 1/4, 1/2, 3/4, 1), interpolated.
_RAMP = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64)


def render_pairs(sketch: Image.Image, photo: Image.Image, pairs: Sequence[tuple[int, int, float]], grid: int,
                 *, box: Sequence[float] | None = None) -> bytes:
    """PNG of size PNG_SIZE: sketch left, photo right, each pair's cells (index on a `grid` x `grid`
    partition) boxed in one colour and linked; an optional sketch region outlined."""
    canvas = side_by_side(sketch, photo)
    draw = ImageDraw.Draw(canvas)
    size = PANEL_SIZE / grid
    if box is not None:
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=BOX_COLOUR, width=3)
    for number, (sketch_cell, photo_cell, _) in enumerate(pairs):
        colour = PAIR_COLOURS[number % len(PAIR_COLOURS)]
        sketch_box = _cell_box(divmod(sketch_cell, grid), size, 0)
        photo_box = _cell_box(divmod(photo_cell, grid), size, PANEL_SIZE + GAP)
        draw.rectangle(sketch_box, outline=colour, width=2)
        draw.rectangle(photo_box, outline=colour, width=2)
        draw.line([_centre(sketch_box), _centre(photo_box)], fill=colour, width=2)
    return png(canvas)


def render_heatmaps(sketch: Image.Image, photo: Image.Image, sketch_heat: np.ndarray, sketch_dropped: np.ndarray,
                    photo_heat: np.ndarray, photo_dropped: np.ndarray) -> bytes:
    """PNG of size PNG_SIZE: each image with its [G, G] map blended over it (`overlay_heatmap`)."""
    return png(side_by_side(overlay_heatmap(sketch, sketch_heat, sketch_dropped),
                            overlay_heatmap(photo, photo_heat, photo_dropped)))


def render_side_by_side(left: Image.Image, right: Image.Image) -> bytes:
    """PNG of size PNG_SIZE: the two images, nothing drawn on them (synthesis)."""
    return png(side_by_side(left, right))


def overlay_heatmap(image: Image.Image, heat: np.ndarray, dropped: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """The image with a [G, G] map blended over it (scaled to its maximum; each cell one colour) and
    the cells in `dropped` [G, G] bool darkened (tokens removed by token selection)."""
    grid = heat.shape[0]
    peak = float(heat.max())
    scaled = heat / peak if peak > 0 else np.zeros_like(heat)
    position = np.clip(scaled, 0, 1) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    fraction = (position - low)[..., None]
    colours = _RAMP[low] * (1 - fraction) + _RAMP[low + 1] * fraction  # [G, G, 3]
    cell = PANEL_SIZE // grid
    colour_map = np.repeat(np.repeat(colours, cell, axis=0), cell, axis=1)
    base = np.asarray(image.convert("RGB").resize((PANEL_SIZE, PANEL_SIZE)), dtype=np.float64)
    blended = base * (1 - alpha) + colour_map * alpha
    shade = np.repeat(np.repeat(dropped.astype(bool), cell, axis=0), cell, axis=1)
    blended[shade] *= 0.25
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    """A white PNG_SIZE canvas with `left` and `right` at PANEL_SIZE, GAP apart."""
    canvas = Image.new("RGB", PNG_SIZE, (255, 255, 255))
    canvas.paste(left.convert("RGB").resize((PANEL_SIZE, PANEL_SIZE)), (0, 0))
    canvas.paste(right.convert("RGB").resize((PANEL_SIZE, PANEL_SIZE)), (PANEL_SIZE + GAP, 0))
    return canvas


def png(canvas: Image.Image) -> bytes:
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def _cell_box(cell: tuple[int, int], size: float, x_offset: int) -> tuple[float, float, float, float]:
    row, col = cell
    return (x_offset + col * size, row * size, x_offset + (col + 1) * size - 1, (row + 1) * size - 1)


def _centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
