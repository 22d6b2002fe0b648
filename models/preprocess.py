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
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_SIZE = 224
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
INK_THRESHOLD = 300  # R+G+B at or below this counts as a stroke
CROP_PADDING = 10

DESCRIPTION = {
    "image_size": IMAGE_SIZE,
    "mean": list(MEAN),
    "std": list(STD),
    "photo": "resize 224x224, RGB",
    "sketch": "crop ink bbox (R+G+B<=300) + 10 px, bilinear aspect resize to 224, pad square with max",
}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> RGB, compositing transparency onto white."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float greyscale: scale to 8 bits before the RGB conversion clips it.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() if array.size and array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def normalize(array: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] with mean = std = 0.5."""
    tensor = torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (tensor - mean) / std


def photo(image: Image.Image, size: int = IMAGE_SIZE) -> torch.Tensor:
    """PIL photo -> [3, size, size] float32."""
    # The reference resizes before converting to RGB; for RGB and greyscale inputs the order does
    # not matter, and converting first keeps palette images from being resized as indices.
    rgb = to_rgb(image).resize((size, size))
    return normalize(np.asarray(rgb, dtype=np.uint8))


def _resize_bilinear(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [height, width, 3], half-pixel-centre bilinear without antialiasing
    (the sampling OpenCV's INTER_LINEAR uses)."""
    tensor = torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float()
    resized = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return resized.squeeze(0).permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def crop_to_ink(array: np.ndarray, padding: int = CROP_PADDING) -> np.ndarray:
    """Crop [H, W, 3] to the strokes' bounding box plus padding; a blank image is left whole."""
    height, width, _ = array.shape
    ys, xs = np.nonzero(array.astype(np.int32).sum(axis=2) <= INK_THRESHOLD)
    if ys.size == 0:
        return array
    # The reference's slice end is exclusive (max + padding), so the same here.
    return array[
        max(0, ys.min() - padding) : min(height, ys.max() + padding),
        max(0, xs.min() - padding) : min(width, xs.max() + padding),
    ]


def resize_long_side(array: np.ndarray, size: int) -> np.ndarray:
    """Resize keeping the aspect ratio so the long side is `size` (short side truncated, >= 1)."""
    height, width, _ = array.shape
    ratio = height / width
    if height > width:
        new_width, new_height = max(1, int(size / ratio)), size
    else:
        new_width, new_height = size, max(1, int(size * ratio))
    return _resize_bilinear(array, new_width, new_height)


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
