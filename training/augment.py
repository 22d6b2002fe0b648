"""Sketch augmentations: make clean line drawings look drawn by hand with a mouse, pen or finger.

The demo's sketches are OpenMoji's black SVGs rendered by a machine: uniform strokes, perfect curves,
perfect placement. A person drawing in the browser gives wobbly, thinner or thicker, broken and
off-centre strokes. :class:`SketchAugment` bridges that gap at training time with five steps, each
applied with its own probability, in this order:

1. ``mouse``: re-draw as uniform thin pure-black lines (threshold, thin each stroke to its centre line,
   grow it to a fixed pen width), as a canvas with a fixed pen width gives.
2. ``stroke_width``: thicker or thinner strokes (PIL ``MinFilter`` grows dark ink, ``MaxFilter`` shrinks it).
3. ``partial``: erase a few small blobs of ink, as strokes left out or not joined up.
4. ``jitter``: a smooth random displacement field (a coarse grid of random offsets warped with PIL's
   mesh transform), so lines wobble.
5. ``affine``: random rotation, scale and translation about the centre.

Every image is first turned into black ink on white (alpha composited onto white, greyscale, a dark
background inverted) and the result is RGB of the input's size. All randomness comes from one
``random.Random``, so a seed (or a generator handed in) fixes the output.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

STEPS = ("mouse", "stroke_width", "partial", "jitter", "affine")
# A pixel darker than this is ink.
INK_THRESHOLD = 128


def to_ink(image: Image.Image) -> Image.Image:
    """Greyscale ("L") black ink on white: transparency composited onto white; a drawing on a dark
    background (its median is dark) is inverted."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        image = canvas
    grey = image.convert("L")
    if np.median(np.asarray(grey.resize((32, 32)))) < INK_THRESHOLD:
        grey = ImageOps.invert(grey)
    return grey


def ink_mask(grey: Image.Image) -> np.ndarray:
    """``[H, W]`` bool: the ink (dark) pixels of a greyscale drawing."""
    return np.asarray(grey) < INK_THRESHOLD


def thin_to_lines(ink: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool ink -> its one-pixel-wide centre lines (Zhang-Suen thinning, 1984).

    Each pass removes, in two half-steps, the border pixels whose removal keeps the stroke connected
    (2..6 ink neighbours, exactly one 0->1 transition around the pixel, and the half-step's side
    conditions), until nothing changes; a stroke w px wide needs about w / 2 passes.
    """
    image = np.pad(ink.astype(np.uint8), 1)
    centre = image[1:-1, 1:-1]
    while True:
        removed_any = False
        for half_step in (0, 1):
            # The 8 neighbours P2..P9, clockwise from north, as views on the padded image.
            p2, p3, p4 = image[:-2, 1:-1], image[:-2, 2:], image[1:-1, 2:]
            p5, p6, p7 = image[2:, 2:], image[2:, 1:-1], image[2:, :-2]
            p8, p9 = image[1:-1, :-2], image[:-2, :-2]
            ring = (p2, p3, p4, p5, p6, p7, p8, p9, p2)
            neighbours = sum(p.astype(np.int8) for p in ring[:8])
            transitions = sum(((ring[i] == 0) & (ring[i + 1] == 1)).astype(np.int8) for i in range(8))
            if half_step == 0:
                sides = ((p2 & p4 & p6) == 0) & ((p4 & p6 & p8) == 0)
            else:
                sides = ((p2 & p4 & p8) == 0) & ((p2 & p6 & p8) == 0)
            remove = (centre == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & sides
            if remove.any():
                centre[remove] = 0  # after the whole mask is computed: each half-step is parallel
                removed_any = True
        if not removed_any:
            return centre.astype(bool)


def _odd(value: int) -> int:
    return value if value % 2 else value + 1


def grow_ink(grey: Image.Image, size: int) -> Image.Image:
    """Thicken dark strokes: a ``size`` x ``size`` (odd) ``MinFilter``, the darkest neighbour wins."""
    return _square_filter(grey, size, ImageFilter.MinFilter)


def shrink_ink(grey: Image.Image, size: int) -> Image.Image:
    """Thin dark strokes: a ``size`` x ``size`` (odd) ``MaxFilter``, the lightest neighbour wins."""
    return _square_filter(grey, size, ImageFilter.MaxFilter)


def _square_filter(grey: Image.Image, size: int, rank_filter: Callable[[int], ImageFilter.Filter]) -> Image.Image:
    # A k x k min/max equals (k-1)/2 passes of 3 x 3 (square elements compose), and PIL's rank filters
    # cost grows with the window area, so the 3 x 3 passes are faster for the same pixels.
    for _ in range(max(0, (size - 1) // 2)):
        grey = grey.filter(rank_filter(3))
    return grey


@dataclass
class SketchAugment:
    """A random hand-drawn look for a black-on-white line drawing; call it on a PIL image.

    Args:
        seed: seeds the instance's own ``random.Random`` (used when a call is handed none).
        p: the probability that each step runs: one number for all, or a mapping from step name
            (``mouse``, ``stroke_width``, ``partial``, ``jitter``, ``affine``) to its probability; steps
            left out of a mapping never run.
        stroke_width: the range of the stroke-width change in pixels at a 224 px image (scaled with the
            image); negative thins, positive thickens, 0 leaves the width.
        mouse_width: the width of mouse-like lines in pixels at 224 px (rounded up to odd).
        erase_count: how many ink blobs ``partial`` erases (inclusive range).
        erase_radius: the blob radius as a fraction of the image side (range).
        max_erased: ``partial`` stops before it would remove more than this fraction of the ink.
        jitter_grid: cells per side of the displacement grid (fewer cells, smoother wobble).
        jitter_amplitude: the largest displacement of a grid point, as a fraction of the image side.
        rotation: the largest rotation in degrees (either way).
        scale: the range of the scale factor.
        translation: the largest shift as a fraction of the image side (each axis).

    Example::

        augment = SketchAugment(seed=0)
        noisy = augment(Image.open("sketch.png"))            # from the instance's generator
        noisy = augment(image, rng=random.Random(epoch))     # from a generator handed in
    """

    seed: int | None = None
    p: float | Mapping[str, float] = 0.5
    stroke_width: tuple[int, int] = (-2, 4)
    mouse_width: int = 3
    erase_count: tuple[int, int] = (1, 3)
    erase_radius: tuple[float, float] = (0.03, 0.07)
    max_erased: float = 0.35
    jitter_grid: int = 4
    jitter_amplitude: float = 0.02
    rotation: float = 15.0
    scale: tuple[float, float] = (0.8, 1.1)
    translation: float = 0.08
    _rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        probabilities = self.probabilities()
        unknown = set(probabilities) - set(STEPS)
        if unknown:
            raise ValueError(f"unknown augmentation step(s) {sorted(unknown)}; known: {', '.join(STEPS)}")
        if any(not 0.0 <= value <= 1.0 for value in probabilities.values()):
            raise ValueError(f"probabilities must be in [0, 1], got {probabilities}")
        self._rng = random.Random(self.seed)

    def probabilities(self) -> dict[str, float]:
        """The probability of each step, by name."""
        if isinstance(self.p, Mapping):
            return {name: float(value) for name, value in self.p.items()}
        return dict.fromkeys(STEPS, float(self.p))

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> Image.Image:
        """Augment ``image`` (any mode); returns an RGB image of the same size, black ink on white."""
        rng = self._rng if rng is None else rng
        probabilities = self.probabilities()
        grey = to_ink(image)
        # Draw every decision even for steps that do not run, so that changing one step's
        # probability does not reshuffle the randomness of the others.
        runs = {name: rng.random() < probabilities.get(name, 0.0) for name in STEPS}
        if runs["mouse"]:
            grey = self.mouse_lines(grey)
        if runs["stroke_width"]:
            # Mouse lines are already as thin as a pen draws; thinning them further leaves 1 px hairlines.
            grey = self.change_stroke_width(grey, rng, thin=not runs["mouse"])
        if runs["partial"]:
            grey = self.erase_blobs(grey, rng)
        if runs["jitter"]:
            grey = self.jitter(grey, rng)
        if runs["affine"]:
            grey = self.affine(grey, rng)
        return grey.convert("RGB")

    def _pixels(self, image: Image.Image, at_224: float) -> float:
        # Parameters are given for 224 px images (the model's input); scale them with the image.
        return at_224 * min(image.size) / 224.0

    def mouse_lines(self, grey: Image.Image) -> Image.Image:
        """Uniform pure-black lines ``mouse_width`` px wide (rounded up to odd), as a canvas pen draws:
        threshold (no grey anti-aliasing), thin every stroke to its one-pixel centre line
        (:func:`thin_to_lines`), then grow the centre lines back with a ``MinFilter``."""
        centre = thin_to_lines(ink_mask(grey))
        if not centre.any():
            return grey
        lines = Image.fromarray(np.where(centre, 0, 255).astype(np.uint8), mode="L")
        return grow_ink(lines, _odd(max(1, round(self._pixels(grey, self.mouse_width)))))

    def change_stroke_width(self, grey: Image.Image, rng: random.Random, thin: bool = True) -> Image.Image:
        """Thicken (``MinFilter``: the darkest neighbour wins) or thin (``MaxFilter``) the strokes by a
        random amount from ``stroke_width`` (only its non-negative part when ``thin`` is false); thinning
        that would remove all ink is not applied."""
        low, high = self.stroke_width
        if not thin:
            low, high = max(low, 0), max(high, 0)
        change = round(self._pixels(grey, rng.uniform(low, high)))
        if change == 0:
            return grey
        size = _odd(abs(change) + 1)
        if change > 0:
            return grow_ink(grey, size)
        thinned = shrink_ink(grey, size)
        return thinned if ink_mask(thinned).any() else grey

    def erase_blobs(self, grey: Image.Image, rng: random.Random) -> Image.Image:
        """Paint white ellipses centred on random ink pixels, so parts of strokes go missing; a blob
        that would take the erased share of the ink above ``max_erased`` is skipped."""
        ink = ink_mask(grey)
        rows, cols = np.nonzero(ink)
        total = len(rows)
        if total == 0:
            return grey
        result = grey.copy()
        draw = ImageDraw.Draw(result)
        side = min(grey.size)
        for _ in range(rng.randint(*self.erase_count)):
            index = rng.randrange(total)
            y, x = int(rows[index]), int(cols[index])
            radius_x = rng.uniform(*self.erase_radius) * side
            radius_y = radius_x * rng.uniform(0.6, 1.4)
            box = (x - radius_x, y - radius_y, x + radius_x, y + radius_y)
            trial = result.copy()
            ImageDraw.Draw(trial).ellipse(box, fill=255)
            if ink_mask(trial).sum() >= (1.0 - self.max_erased) * total:
                draw.ellipse(box, fill=255)
        return result

    def jitter(self, grey: Image.Image, rng: random.Random) -> Image.Image:
        """Warp with a smooth random displacement field: a ``jitter_grid`` x ``jitter_grid`` mesh whose
        inner vertices move by up to ``jitter_amplitude`` of the side; PIL maps each output cell from
        the displaced source quad (bilinear), so the field is continuous across cells."""
        width, height = grey.size
        cells = max(1, self.jitter_grid)
        amplitude = self.jitter_amplitude * min(width, height)
        xs = [width * i / cells for i in range(cells + 1)]
        ys = [height * j / cells for j in range(cells + 1)]
        # Source position of each grid vertex; the border stays put so that nothing is pulled in from outside.
        source = {}
        for j, y in enumerate(ys):
            for i, x in enumerate(xs):
                inner = 0 < i < cells and 0 < j < cells
                dx = rng.uniform(-amplitude, amplitude) if inner else 0.0
                dy = rng.uniform(-amplitude, amplitude) if inner else 0.0
                source[i, j] = (x + dx, y + dy)
        mesh = []
        for j in range(cells):
            for i in range(cells):
                box = (round(xs[i]), round(ys[j]), round(xs[i + 1]), round(ys[j + 1]))
                # Quad corners in PIL's order: upper-left, lower-left, lower-right, upper-right.
                quad = (*source[i, j], *source[i, j + 1], *source[i + 1, j + 1], *source[i + 1, j])
                mesh.append((box, quad))
        return grey.transform(grey.size, Image.Transform.MESH, mesh, Image.Resampling.BILINEAR, fillcolor=255)

    def affine(self, grey: Image.Image, rng: random.Random) -> Image.Image:
        """Rotate by up to ``rotation`` degrees, scale within ``scale`` and shift by up to ``translation``
        of the side, about the image centre; uncovered corners are white."""
        width, height = grey.size
        angle = math.radians(rng.uniform(-self.rotation, self.rotation))
        factor = rng.uniform(*self.scale)
        shift_x = rng.uniform(-self.translation, self.translation) * width
        shift_y = rng.uniform(-self.translation, self.translation) * height
        centre_x, centre_y = width / 2.0, height / 2.0
        # PIL wants the inverse map (output -> input): undo the shift, then the rotation and scale.
        cos, sin = math.cos(angle) / factor, math.sin(angle) / factor
        a, b = cos, sin
        d, e = -sin, cos
        out_x, out_y = centre_x + shift_x, centre_y + shift_y
        c = centre_x - a * out_x - b * out_y
        f = centre_y - d * out_x - e * out_y
        return grey.transform(
            grey.size, Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BILINEAR, fillcolor=255
        )
