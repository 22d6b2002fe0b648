"""A huge (but allowed) sketch: bounded memory, and still preprocessed like the drawing it is.

`decode_sketch` passes images with a long side of 1792 px or more through `preprocess.shrink_sketch`
(ink crop at full resolution, then the darkest pixel of each block down to twice the model input).
These tests check that the thin strokes of a large drawing reach the model input, that sketches the
reduction does not apply to are preprocessed bit for bit as before, and the peak memory of a
max-pixel upload.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from models import preprocess
from service.uploads import decode_sketch
from tests.support.images import encode as png
from tests.support.images import transparent_paper

MAX_PIXELS = 25_000_000  # the service's default limit
# A model-input pixel counts as ink below this (paper is 1.0, black -1.0). The reduced path averages
# 2 x 2 darkest pixels, so a pixel behind which one of the four is black is 191/255 -> 0.498.
INK_BELOW = 0.6


def preprocessed(data: bytes, shrink: bool = True) -> torch.Tensor:
    return preprocess.sketch(decode_sketch(data, max_pixels=MAX_PIXELS, shrink=shrink))


# (1) Thin strokes of a large sketch ------------------------------------------------------------

# Canvas and shapes in canvas pixels. The rectangle encloses everything, so the ink's bounding box
# is exactly its corners (PIL draws both ends inclusive and the outline inwards).
CANVAS = (4800, 3600)
FRAME = (600, 500, 4200, 3300)


def draw_shapes(draw: ImageDraw.ImageDraw, scale: float, left: float, top: float, width: int) -> None:
    """The drawing, with canvas point p drawn at (p - (left, top)) * scale."""

    def at(*points: float) -> list[float]:
        return [(value - (left if number % 2 == 0 else top)) * scale for number, value in enumerate(points)]

    draw.rectangle(at(*FRAME), outline="black", width=width)
    draw.ellipse(at(1000, 800, 3800, 3000), outline="black", width=width)
    draw.line(at(700, 600, 4100, 3200), fill="black", width=width)
    draw.line(at(800, 2900, 1200, 3200, 1600, 2900, 2000, 3200), fill="black", width=width)
    draw.rectangle(at(2600, 1200, 3000, 1600), outline="black", width=width)


def large_drawing(stroke: int) -> Image.Image:
    image = Image.new("RGB", CANVAS, "white")
    draw_shapes(ImageDraw.Draw(image), 1.0, 0, 0, stroke)
    return image


def small_rendition() -> torch.Tensor:
    """The same drawing drawn directly at model-input scale with 1-px strokes: the reference's crop
    (ink box + 10 px, end exclusive) worked out from FRAME, scaled so its long side is 224."""
    left, top, right, bottom = FRAME[0] - 10, FRAME[1] - 10, FRAME[2] + 10, FRAME[3] + 10
    scale = 224 / max(right - left, bottom - top)
    canvas = Image.new("RGB", (224, int(224 * (bottom - top) / (right - left))), "white")
    draw_shapes(ImageDraw.Draw(canvas), scale, left, top, 1)
    # Its own crop keeps the whole canvas (the 10-px margin scaled is under a pixel), and its resize
    # to 224 is the identity, so this is the drawing padded to a square.
    return preprocess.sketch(canvas)


def near(mask: np.ndarray) -> np.ndarray:
    """True where `mask` holds within one pixel (3 x 3 neighbourhood)."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    return np.logical_or.reduce([padded[1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
                                 for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def ink(tensor: torch.Tensor) -> np.ndarray:
    return (tensor.numpy() < INK_BELOW).any(axis=0)


def agreement(tensor: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """(recall, precision) of `tensor`'s ink against `expected`'s, each allowed one pixel off."""
    got, want = ink(tensor), ink(expected)
    return float((want & near(got)).sum() / want.sum()), float((got & near(want)).sum() / max(1, got.sum()))


@pytest.fixture(scope="module")
def thin_stroke_png() -> bytes:
    return png(large_drawing(stroke=2))


def test_thin_strokes_of_a_large_sketch_reach_the_model_input(thin_stroke_png):
    decoded = decode_sketch(thin_stroke_png, max_pixels=MAX_PIXELS)
    # The crop (3620 x 2820 at full resolution) reduced to twice the model input's 224 x 174.
    assert decoded.mode == "RGB" and decoded.size == (448, 348)
    tensor = preprocess.sketch(decoded)
    expected = small_rendition()
    assert tensor.shape == expected.shape == (3, 224, 224)
    # Same geometry: the square padding (rows 0..24 and 199..223) is paper in both, and the ink's
    # bounding box is the frame's in both, to the pixel.
    top = (224 - 174) // 2
    assert bool((tensor[:, :top] == 1).all()) and bool((tensor[:, top + 174 :] == 1).all())
    rows, columns = np.nonzero(ink(tensor))
    want_rows, want_columns = np.nonzero(ink(expected))
    assert abs(rows.min() - want_rows.min()) <= 1 and abs(rows.max() - want_rows.max()) <= 1
    assert abs(columns.min() - want_columns.min()) <= 1 and abs(columns.max() - want_columns.max()) <= 1
    # Every stroke is there and nothing else: the two rasterise the same lines at scales 1/16 apart,
    # so a stroke may land one pixel over; beyond that they must agree (measured 1.0 and 1.0).
    recall, precision = agreement(tensor, expected)
    assert recall >= 0.97 and precision >= 0.97


def test_averaging_the_large_sketch_down_would_lose_its_strokes(thin_stroke_png):
    # Guards the test above: the darkest-pixel rule is what keeps the strokes. Averaged 8 x 8, a
    # 2-px black stroke is at best 75 % paper (R+G+B ~ 570 > 300): no ink left for the crop.
    averaged = Image.open(io.BytesIO(thin_stroke_png)).reduce(8)
    recall, _ = agreement(preprocess.sketch(averaged), small_rendition())
    assert recall < 0.5


# (2) Sketches the reduction does not apply to: bit for bit as before ------------------------------

def canvas_drawing(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """Black strokes whose ink bounding box is exactly `box` (inclusive), on white."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle(box, outline="black", width=3)
    left, top, right, bottom = box
    draw.ellipse((left + 20, top + 20, right - 20, bottom - 20), outline=(40, 40, 40), width=2)
    draw.line((left, bottom, right, top), fill=(90, 60, 30), width=1)
    return image


def palette_with_transparent_white(image: Image.Image) -> Image.Image:
    paletted = image.convert("L").convert("P")
    paletted.info["transparency"] = 255  # the greyscale palette's white
    return paletted


def sixteen_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale whose paper brightens to the right, so that tiles have different maxima (the
    scaling to 8 bits must use the whole image's)."""
    grey = np.asarray(image.convert("L"), dtype=np.uint16) * 200
    grey += (np.arange(grey.shape[1], dtype=np.uint16) * 5)[None, :]
    return Image.fromarray(grey)


ENCODINGS = {
    "rgb-png": lambda image: png(image),
    "grey-png": lambda image: png(image.convert("L")),
    "rgba-png-transparent-paper": lambda image: png(transparent_paper(image)),
    "la-png": lambda image: png(image.convert("LA")),
    "palette-png-transparency": lambda image: png(palette_with_transparent_white(image)),
    "16-bit-png": lambda image: png(sixteen_bit(image)),
    "1-bit-png": lambda image: png(image.convert("L").point(lambda value: 255 if value > 200 else 0).convert("1")),
    "rgb-jpeg": lambda image: png(image, "JPEG", quality=90),
    "cmyk-jpeg": lambda image: png(image.convert("CMYK"), "JPEG", quality=90),
    "rgba-webp-transparent-paper": lambda image: png(transparent_paper(image), "WEBP", lossless=True),
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize(("size", "box"), [
    ((1791, 1300), (12, 15, 1780, 1290)),  # whole image under 1792 px: returned as decoded
    ((1900, 1100), (300, 100, 1300, 900)),  # 1900 px canvas, 1021 px crop: the exact crop
    ((1900, 1100), (60, 50, 1831, 1000)),  # crop 1791 px (ink 1771 + 2 x 10): the largest exact one
], ids=["small-image", "large-canvas-small-crop", "crop-at-threshold"])
def test_below_the_threshold_preprocessing_is_bit_identical(encoding, size, box):
    data = ENCODINGS[encoding](canvas_drawing(size, box))
    shrunk = decode_sketch(data, max_pixels=MAX_PIXELS)
    assert max(shrunk.size) < preprocess.SHRINK_FROM
    assert torch.equal(preprocess.sketch(shrunk), preprocessed(data, shrink=False))


def test_an_image_under_the_threshold_is_returned_as_decoded():
    data = png(canvas_drawing((1791, 900), (10, 10, 1700, 800)).convert("L"))
    decoded = decode_sketch(data, max_pixels=MAX_PIXELS)
    assert decoded.mode == "L" and decoded.tobytes() == Image.open(io.BytesIO(data)).tobytes()


def test_a_crop_at_the_threshold_is_reduced_and_keeps_geometry_and_strokes():
    # Ink 1772 px wide: the crop is 1792 px, the first that is reduced. The model input has the
    # unreduced path's shape and every one of its ink pixels (the 1-px diagonal, which the
    # unreduced resize samples at 1 row in 8, is a full line in the reduced one).
    data = png(canvas_drawing((1900, 1100), (60, 50, 1832, 1000)))
    shrunk = decode_sketch(data, max_pixels=MAX_PIXELS)
    assert shrunk.size == (448, 2 * int(224 * 970 / 1792))
    tensor, unreduced = preprocess.sketch(shrunk), preprocessed(data, shrink=False)
    height = int(224 * 970 / 1792)
    top = (224 - height) // 2
    for each in (tensor, unreduced):
        assert bool((each[:, :top] == 1).all()) and bool((each[:, top + height :] == 1).all())
    recall, _ = agreement(tensor, unreduced)
    assert recall >= 0.97


# (3) Peak memory of a max-pixel upload -------------------------------------------------------------

CHILD = """
import gc, os, sys
from models import preprocess
from service.uploads import decode_sketch

def kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

preprocess.sketch(decode_sketch(open(sys.argv[2], "rb").read(), max_pixels=25_000_000))  # first use
data = open(sys.argv[1], "rb").read()
gc.collect()
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # the peak mark (VmHWM) := the current RSS
baseline = kib("VmRSS")
tensor = preprocess.sketch(decode_sketch(data, max_pixels=25_000_000))
assert tuple(tensor.shape) == (3, 224, 224)
print(kib("VmHWM") - baseline, flush=True)
os._exit(0)  # skip the interpreter's shutdown (tearing torch down), which is not the upload's
"""


def peak_growth_mib(path: Path, warm_up: Path) -> float:
    """Peak RSS of a fresh process decoding and preprocessing `path`, above its RSS just before.

    Read by the child from its own VmHWM: ru_maxrss (getrusage(RUSAGE_CHILDREN), wait4) would not do,
    as Linux carries the parent's peak RSS into the child's at fork + exec, and pytest's is large.
    """
    completed = subprocess.run([sys.executable, "-c", CHILD, str(path), str(warm_up)], capture_output=True,
                               check=False)
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")[-2000:]
    return int(completed.stdout.split()[-1]) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_max_pixel_png_decodes_and_preprocesses_in_bounded_memory(tmp_path, mode):
    side = int(MAX_PIXELS**0.5)  # 5000 x 5000, exactly the limit
    drawing = Image.new("RGB", (side, side), "white")
    draw_shapes(ImageDraw.Draw(drawing), side / CANVAS[0], 0, 0, 2)
    path = tmp_path / "large.png"
    (transparent_paper(drawing) if mode == "RGBA" else drawing).save(path)
    del drawing
    warm_up = tmp_path / "small.png"
    canvas_drawing((200, 200), (20, 20, 180, 180)).save(warm_up)
    # The decoded image itself is 75 MB (RGB) or 100 MB (RGBA) and must exist; the rest is tiles of
    # at most 512 x 512 and the 448-px result (measured: ~100 MiB either way). Without the reduction
    # it is ~400-480 MiB (benchmarks/results/upload_memory.json), the float copies of the whole image.
    assert peak_growth_mib(path, warm_up) < 150
