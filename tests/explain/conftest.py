"""Small models and images for the explanation tests: zse-tiny (random weights, eval mode) with and
without token selection, and two drawn photos preprocessed as the model sees them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import models
from models import preprocess
from models.config import ZSE_PRESETS
from tests.service.conftest import draw_photo


def photo_pixels(seed: int, label: str) -> np.ndarray:
    """uint8 [224, 224, 3]: a drawn photo resized as `preprocess.photo` resizes it."""
    return np.asarray(draw_photo(seed, label).resize((224, 224)), dtype=np.uint8)


def as_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [224, 224, 3] -> the model's input [1, 3, 224, 224]."""
    return preprocess.normalize(pixels).unsqueeze(0)


@pytest.fixture(scope="session")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build_model("zse-tiny").eval()


@pytest.fixture(scope="session")
def tiny_selecting() -> torch.nn.Module:
    """zse-tiny with token selection at blocks 1, 2, 3 (the last block selects too)."""
    torch.manual_seed(0)
    config = replace(ZSE_PRESETS["zse-tiny"], keep_rate_sketch=0.7, keep_rate_photo=0.6)
    return models.build_model(config).eval()


@pytest.fixture(scope="session")
def pixels() -> tuple[np.ndarray, np.ndarray]:
    """Two photos, uint8 [224, 224, 3] each: a circle and a square."""
    return photo_pixels(1, "circle"), photo_pixels(2, "square")


@pytest.fixture(scope="session")
def sketch_pixels() -> np.ndarray:
    image = Image.new("RGB", (224, 224), "white")
    from PIL import ImageDraw

    ImageDraw.Draw(image).ellipse([50, 50, 170, 170], outline="black", width=5)
    return np.asarray(image, dtype=np.uint8)
