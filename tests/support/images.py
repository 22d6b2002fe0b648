"""Synthetic images, the one owner of every picture the tests generate: drawn photos and line
sketches (the service's gallery and queries), gradient photos (the indexer's galleries), the
training tests' jittered shapes, and hostile or odd payloads built byte by byte where PIL would
refuse to write them.

Every generator is deterministic for its arguments; tests depend on the exact pixels (sizes, seeds,
colours), so change one only together with every test that uses it.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    import torch

# ------------------------------------------------------------------------------------------------
# Photos and sketches of circles and squares (the service's gallery and queries)


def draw_photo(seed: int, label: str, size: int = 96) -> Image.Image:
    """A photo-like RGB picture: a filled ellipse (``label == "circle"``) or rectangle in a random dark
    colour on a random light background, its box drawn from ``seed``. ``size`` sets the canvas only."""
    rng = np.random.default_rng(seed)
    background = tuple(int(v) for v in rng.integers(120, 255, 3))
    ink = tuple(int(v) for v in rng.integers(0, 110, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    x0, y0 = (int(v) for v in rng.integers(5, 30, 2))
    x1, y1 = (int(v) for v in rng.integers(60, 90, 2))
    if label == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=ink)
    else:
        draw.rectangle([x0, y0, x1, y1], fill=ink)
    return image


def sketch_image(kind: str = "circle", size: int = 200, box: tuple[int, int, int, int] | None = None,
                 width: int = 4) -> Image.Image:
    """A black-on-white line drawing (circle or square), RGB: strokes ``width`` px wide around ``box``
    (by default the middle three fifths of the canvas)."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    outline = list(box) if box is not None else [size // 5, size // 5, 4 * size // 5, 4 * size // 5]
    if kind == "circle":
        draw.ellipse(outline, outline="black", width=width)
    else:
        draw.rectangle(outline, outline="black", width=width)
    return image


def sketch_png(kind: str = "circle", size: int = 200) -> bytes:
    """`sketch_image` as PNG bytes."""
    return encode(sketch_image(kind, size), "PNG")


def drawing(size: int = 200, kind: str = "circle") -> Image.Image:
    """`sketch_image`, size first (the reliability tests' spelling): black ink on white paper, RGB."""
    return sketch_image(kind, size)


def photo_pixels(seed: int, label: str) -> np.ndarray:
    """uint8 [224, 224, 3]: `draw_photo` resized as `preprocess.photo` resizes it."""
    return np.asarray(draw_photo(seed, label).resize((224, 224)), dtype=np.uint8)


def as_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [224, 224, 3] -> the model's input [1, 3, 224, 224]."""
    from models import preprocess

    return preprocess.normalize(pixels).unsqueeze(0)


# ------------------------------------------------------------------------------------------------
# Gradient photos (the indexer's galleries)


def make_png(path: Path, seed: int, size: int = 64) -> Path:
    """A ``size`` x ``size`` photo-like PNG at ``path``: a colour gradient plus noise, different for
    every seed (parent folders are created)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = rng.uniform(0, 255, 3).astype(np.float32)
    slope = rng.uniform(-120, 120, (2, 3)).astype(np.float32)
    pixels = base + ramp[:, None, None] * slope[0] + ramp[None, :, None] * slope[1]
    pixels += rng.normal(0, 25, (size, size, 3)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


# ------------------------------------------------------------------------------------------------
# Jittered shapes (the training tests' sketches and photos)

SHAPES = ("circle", "square", "triangle", "cross", "hbar", "vbar")
SHAPE_COLOURS = ((220, 40, 40), (40, 160, 40), (40, 60, 220), (200, 160, 20), (160, 40, 180), (20, 170, 170))


def draw_shape(kind: int, modality: str, rng: np.random.Generator, size: int = 32) -> Image.Image:
    """Class ``kind``'s shape, jittered: a black outline on white (sketch) or filled in the class's
    colour on a light random background (photo)."""
    background = "white" if modality == "sketch" else tuple(int(v) for v in rng.integers(200, 256, 3))
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    shift = int(rng.integers(-3, 4))
    low, high = 6 + shift, 26 + shift
    middle = (low + high) // 2
    fill = None if modality == "sketch" else SHAPE_COLOURS[kind % len(SHAPE_COLOURS)]
    ink = (0, 0, 0)
    shape = kind % len(SHAPES)
    if shape == 0:
        pen.ellipse([low, low, high, high], outline=ink, fill=fill, width=2)
    elif shape == 1:
        pen.rectangle([low, low, high, high], outline=ink, fill=fill, width=2)
    elif shape == 2:
        pen.polygon([(low, high), (high, high), (middle, low)], outline=ink, fill=fill, width=2)
    elif shape == 3:
        pen.line([(low, low), (high, high)], fill=fill or ink, width=3)
        pen.line([(low, high), (high, low)], fill=fill or ink, width=3)
    elif shape == 4:
        pen.rectangle([low, middle - 3, high, middle + 3], outline=ink, fill=fill, width=2)
    else:
        pen.rectangle([middle - 3, low, middle + 3, high], outline=ink, fill=fill, width=2)
    return image


# ------------------------------------------------------------------------------------------------
# Encodings: odd, hostile, or not images at all


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    """`image` saved in format ``fmt`` (with PIL's save ``options``), as bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def transparent_paper(image: Image.Image) -> Image.Image:
    """Black-on-white `image` as RGBA ink on transparent paper: black, alpha = darkness."""
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    layer.putalpha(image.convert("L").point(lambda value: 255 - value))
    return layer


def animated(fmt: str, first: Image.Image, second: Image.Image) -> bytes:
    """A two-frame animation of `first` then `second` in ``fmt`` (PNG, WEBP, GIF)."""
    return encode(first, fmt, save_all=True, append_images=[second], duration=100, loop=0)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, rows: int = 64) -> bytes:
    """A small PNG whose IHDR declares width x height 8-bit greyscale, with a real zlib stream of
    `rows` all-zero scanlines behind it (a decoder that trusts the header allocates width*height)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    scanline = b"\x00" * (width + 1)  # filter byte + pixels
    data = b"".join(compressor.compress(scanline) for _ in range(rows)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def zero_png(width: int, height: int) -> bytes:
    """A complete, valid all-black greyscale PNG: megapixels in a few kilobytes."""
    return png_bomb(width, height, rows=height)


def ztxt_bomb(base: bytes, inflated: int = 64 * 1024 * 1024) -> bytes:
    """`base` PNG with a zTXt chunk that inflates to `inflated` bytes, inserted after IHDR."""
    compressed = zlib.compress(b"\x00" * inflated, 9)
    chunk = png_chunk(b"zTXt", b"Comment\x00\x00" + compressed)
    return base[:33] + chunk + base[33:]


def minimal_pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
            b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")


SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="200" height="200">'
       b'<circle cx="100" cy="100" r="60" stroke="black" fill="none" stroke-width="4"/></svg>')
