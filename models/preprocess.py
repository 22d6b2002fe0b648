"""Preprocessing that matches the reference ZSE-SBIR code.

- photo: resize to 224x224 (PIL's default resampling for `Image.resize`), RGB.
- sketch: crop to the bounding box of the pixels whose R+G+B <= 300, widened by 10 px; resize with
  bilinear interpolation keeping the aspect so the long side is 224; pad to a square with the
  image's maximum value (white).
- both: to [0, 1], then mean = std = 0.5, giving values in [-1, 1].

Two deliberate differences, both invisible on the benchmark datasets (RGB without alpha):
- an alpha channel is composited onto white first (a canvas drawing's transparent background is
  paper, not black ink);
- the reference resizes sketches with OpenCV's bilinear filter; here torch's bilinear interpolation
  without antialiasing does the same arithmetic in floating point, so pixels may differ by one
  grey level from OpenCV's fixed-point rounding.

And one more where `shrink_sketch` is used first (the service does, on every upload): a sketch whose
ink crop has a long side of SHRINK_FROM (1792) px or more is cropped at full resolution, tile by
tile, and reduced to 448 px keeping the darkest pixel of each block, so that no full-size float
copy is ever made (a 25 Mpx upload cost ~600 MB). Its strokes then all reach the model input, where
the reference's resize, which reads 2 of every f rows and columns when it shrinks by f, loses thin
ones. Sketches under that size are preprocessed exactly as before.
"""

from __future__ import annotations

import os
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_SIZE = 224
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
INK_THRESHOLD = 300  # R+G+B at or below this counts as a stroke
CROP_PADDING = 10
# `shrink_sketch` reduces sketches whose ink crop has a long side of at least SHRINK_FROM px; smaller
# ones are preprocessed exactly as they are.
SHRINK_FROM = 8 * IMAGE_SIZE
_TILE = 512  # side of the tiles `shrink_sketch` converts at a time (a quarter Mpx: a few MB of temporaries)

DESCRIPTION = {
    "image_size": IMAGE_SIZE,
    "mean": list(MEAN),
    "std": list(STD),
    "photo": "resize 224x224, RGB",
    "sketch": "crop ink bbox (R+G+B<=300) + 10 px, bilinear aspect resize to 224, pad square with max",
}


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """The project's one image reader: open ``path`` and decode it now, so that a truncated or broken
    file fails here (OSError, SyntaxError or ValueError from PIL), not in a later step; the file is
    closed on return. Mode and size are the file's own (``to_rgb``, ``photo`` and ``sketch`` convert)."""
    with Image.open(path) as image:
        image.load()
        return image


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """A gallery photo (or a sketch file), decoded and RGB, transparency composited onto white."""
    return to_rgb(read_image(path))


def to_rgb(image: Image.Image, *, peak: float | None = None) -> Image.Image:
    """Any PIL image -> RGB, compositing transparency onto white.

    peak: for 16-bit and float greyscale, the maximum to scale by instead of `image`'s own (when
    `image` is a tile of a larger image, that image's `_grey_peak`).
    """
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float greyscale: scale to 8 bits before the RGB conversion clips it.
        array = np.asarray(image, dtype=np.float64)
        if peak is None:
            peak = array.max() if array.size and array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def _grey_peak(image: Image.Image) -> float | None:
    """The maximum `to_rgb` scales a 16-bit or float greyscale image by, read without a copy of
    the pixels; None for the other modes."""
    if image.mode not in ("I", "I;16", "I;16B", "I;16L", "F"):
        return None
    highest = float(cast(float, image.getextrema()[1]))  # one band: (min, max)
    return highest if highest > 255 else 255.0


def normalize(array: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] with mean = std = 0.5."""
    tensor = torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (tensor - mean) / std


def photo(image: Image.Image, size: int = IMAGE_SIZE) -> torch.Tensor:
    """PIL photo -> [3, size, size] float32."""
    return normalize(np.asarray(photo_pixels(image, size), dtype=np.uint8))


def photo_pixels(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """PIL photo -> the RGB size x size image the model sees (what explanations draw and patch)."""
    # The reference resizes before converting to RGB; for RGB and greyscale inputs the order does
    # not matter, and converting first keeps palette images from being resized as indices.
    return to_rgb(image).resize((size, size))


def _resize_bilinear(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [height, width, 3], half-pixel-centre bilinear without antialiasing
    (the sampling OpenCV's INTER_LINEAR uses)."""
    tensor = torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float()
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return resized.squeeze(0).permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def ink_mask(array: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> bool [H, W]: R+G+B <= INK_THRESHOLD (summed in uint16, which holds 3 * 255,
    so that no int32/int64 copy of the whole image is made)."""
    if array.dtype != np.uint8:
        return array.astype(np.int64).sum(axis=2) <= INK_THRESHOLD
    return _rgb_sum(array) <= INK_THRESHOLD


def _rgb_sum(array: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> uint16 [H, W] R+G+B (uint16 holds 3 * 255; no wider copy is made)."""
    total = array[..., 0].astype(np.uint16)
    total += array[..., 1]
    total += array[..., 2]
    return total


def _padded_box(ys: tuple[int, int], xs: tuple[int, int], height: int, width: int,
                padding: int = CROP_PADDING) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the ink rows ys = (min, max) and columns xs plus padding; the
    end is max + padding, exclusive, as the reference slices."""
    return (max(0, ys[0] - padding), min(height, ys[1] + padding),
            max(0, xs[0] - padding), min(width, xs[1] + padding))


def crop_to_ink(array: np.ndarray, padding: int = CROP_PADDING) -> np.ndarray:
    """Crop [H, W, 3] to the strokes' bounding box plus padding; a blank image is left whole."""
    height, width, _ = array.shape
    ys, xs = np.nonzero(ink_mask(array))
    if ys.size == 0:
        return array
    top, bottom, left, right = _padded_box((int(ys.min()), int(ys.max())), (int(xs.min()), int(xs.max())),
                                           height, width, padding)
    return array[top:bottom, left:right]


def resize_long_side(array: np.ndarray, size: int) -> np.ndarray:
    """Resize keeping the aspect ratio so the long side is `size` (short side truncated, >= 1)."""
    height, width, _ = array.shape
    new_height, new_width = _long_side_shape(height, width, size)
    return _resize_bilinear(array, new_width, new_height)


def _long_side_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) that `resize_long_side` resizes a height x width array to."""
    ratio = height / width
    if height > width:
        return size, max(1, int(size / ratio))
    return max(1, int(size * ratio)), size


def pad_square(array: np.ndarray) -> np.ndarray:
    """Pad [H, W, 3] to a square with the array's maximum value, split as the reference does."""
    height, width, channels = array.shape
    fill = array.max()
    if height > width:
        left = (height - width) // 2
        out = np.full((height, height, channels), fill, dtype=array.dtype)
        out[:, left : left + width] = array
    else:
        top = (width - height) // 2
        out = np.full((width, width, channels), fill, dtype=array.dtype)
        out[top : top + height] = array
    return out


def sketch(image: Image.Image, size: int = IMAGE_SIZE) -> torch.Tensor:
    """PIL sketch -> [3, size, size] float32."""
    array = np.asarray(to_rgb(image), dtype=np.uint8)
    square = pad_square(resize_long_side(crop_to_ink(array), size))
    if square.shape[0] != size:  # only when both sides were truncated below `size`
        square = _resize_bilinear(square, size, size)
    return normalize(square)


def shrink_sketch(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """A sketch of any size -> an image that `sketch(..., size)` preprocesses as it would the
    original, made tile by tile so that no full-size copy of `image` is ever made.

    - long side under SHRINK_FROM: `image` itself;
    - otherwise the region `crop_to_ink` would keep (ink found at full resolution; padding in
      full-resolution pixels), as RGB: `sketch` gives exactly the same tensor for it;
    - and when that region's long side is at least SHRINK_FROM, it is reduced to twice the shape
      `resize_long_side` will give it (long side 2 * size), keeping of each block the darkest pixel
      (least R+G+B): a block with ink stays ink, so a 1-px stroke survives at any reduction, where
      averaging would fade it to paper. `sketch` then finds the same crop in the result and halves
      it (its bilinear resize at exactly 2x averages 2 x 2 pixels). Twice, not more: past 2x that
      resize, which does not antialias, skips whole rows and columns, so thin strokes would vanish.
    """
    width, height = image.size
    if max(width, height) < SHRINK_FROM:
        return image
    peak = _grey_peak(image)
    left, top, right, bottom = _ink_box(image, peak)
    crop_width, crop_height = right - left, bottom - top
    if max(crop_width, crop_height) < SHRINK_FROM:
        return to_rgb(image.crop((left, top, right, bottom)), peak=peak)
    out_height, out_width = _halving_shape(crop_height, crop_width, size)
    row_starts = np.arange(out_height, dtype=np.int64) * crop_height // out_height
    column_starts = np.arange(out_width, dtype=np.int64) * crop_width // out_width
    # Tiles of whole blocks, about _TILE px a side (one block when blocks are larger).
    rows_per_tile = max(1, _TILE * out_height // crop_height)
    columns_per_tile = max(1, _TILE * out_width // crop_width)
    out = np.empty((out_height, out_width, 3), dtype=np.uint8)
    for row in range(0, out_height, rows_per_tile):
        rows = row_starts[row : row + rows_per_tile]
        y_end = int(row_starts[row + rows_per_tile]) if row + rows_per_tile < out_height else crop_height
        for column in range(0, out_width, columns_per_tile):
            columns = column_starts[column : column + columns_per_tile]
            x_end = (int(column_starts[column + columns_per_tile]) if column + columns_per_tile < out_width
                     else crop_width)
            box = (left + int(columns[0]), top + int(rows[0]), left + x_end, top + y_end)
            tile = _rgb_tile(image, box, peak)
            out[row : row + rows.size, column : column + columns.size] = _darkest_blocks(
                tile, rows - rows[0], columns - columns[0]
            )
    return Image.fromarray(out, mode="RGB")


def _halving_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """The shape to reduce a height x width crop to: twice what `resize_long_side` gives the crop,
    adjusted by one pixel where needed so that `resize_long_side` gives the reduced image that same
    shape (its float ratio can truncate 2n back to n - 1); never more than the crop."""
    target = _long_side_shape(height, width, size)
    for extra in (0, 1):
        shape = (min(height, 2 * target[0] + extra), min(width, 2 * target[1] + extra))
        if _long_side_shape(*shape, size) == target:
            return shape
    return min(height, 2 * target[0]), min(width, 2 * target[1])  # not reached for crops >= 4 * size


def _rgb_tile(image: Image.Image, box: tuple[int, int, int, int], peak: float | None) -> np.ndarray:
    return np.asarray(to_rgb(image.crop(box), peak=peak), dtype=np.uint8)


def _ink_box(image: Image.Image, peak: float | None) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the region `crop_to_ink` keeps, found tile by tile; the whole
    image when there is no ink."""
    width, height = image.size
    # _TILE x _TILE, or as many pixels in a strip when the image is narrower than a tile.
    tile_width = max(_TILE, _TILE * _TILE // min(height, _TILE))
    tile_height = max(_TILE, _TILE * _TILE // min(width, _TILE))
    ys: list[int] = []
    xs: list[int] = []
    for y in range(0, height, tile_height):
        for x in range(0, width, tile_width):
            ink = ink_mask(_rgb_tile(image, (x, y, min(x + tile_width, width), min(y + tile_height, height)), peak))
            rows, columns = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
            if rows.size:
                ys += [y + int(rows[0]), y + int(rows[-1])]
                xs += [x + int(columns[0]), x + int(columns[-1])]
    if not ys:
        return 0, 0, width, height
    top, bottom, left, right = _padded_box((min(ys), max(ys)), (min(xs), max(xs)), height, width)
    return left, top, right, bottom


def _darkest_blocks(array: np.ndarray, row_starts: np.ndarray, column_starts: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> [len(row_starts), len(column_starts), 3]: of each block (rows from one
    start to the next, the last to H; columns likewise), the pixel with the least R+G+B (of
    equals, the least (R, G, B))."""
    # One integer per pixel that orders by R+G+B first, then carries the colour: the least of a
    # block is its darkest pixel, and the least is separable (rows, then columns).
    height, width, _ = array.shape
    colour = np.zeros((height, width, 4), dtype=np.uint8)
    colour[..., :3] = array[..., ::-1]  # B, G, R, 0: as little-endian uint32, R << 16 | G << 8 | B
    total = _rgb_sum(array)
    key = total.astype(np.uint64)
    key <<= 24
    key |= colour.view(np.dtype("<u4"))[..., 0]
    del colour, total
    key = np.minimum.reduceat(key, row_starts, axis=0)
    key = np.minimum.reduceat(key, column_starts, axis=1)
    return np.stack([(key >> 16) & 255, (key >> 8) & 255, key & 255], axis=2).astype(np.uint8)


def to_image(tensor: torch.Tensor) -> Image.Image:
    """Preprocessed [3, H, W] (normalised with MEAN / STD) -> the RGB image the model saw."""
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    pixels = (tensor.detach().float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()))
