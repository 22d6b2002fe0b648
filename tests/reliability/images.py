"""Hostile and odd image payloads, built byte by byte where PIL would refuse to write them."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png_chunk(kind: bytes, data: bytes) -> bytes:
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


def drawing(size: int = 200, kind: str = "circle") -> Image.Image:
    """Black ink on white paper, RGB (the service tests' sketch)."""
    from tests.service.conftest import sketch_image

    return sketch_image(kind, size)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def animated(fmt: str, first: Image.Image, second: Image.Image) -> bytes:
    return encode(first, fmt, save_all=True, append_images=[second], duration=100, loop=0)


def minimal_pdf() -> bytes:
    return (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
            b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")


SVG = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="200" height="200">'
       b'<circle cx="100" cy="100" r="60" stroke="black" fill="none" stroke-width="4"/></svg>')
