"""Small models and images for the explanation tests: zse-tiny (random weights, eval mode) with and
without token selection, and two drawn photos preprocessed as the model sees them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

import models
from models.config import ZSE_PRESETS
from tests.support.images import photo_pixels, sketch_image


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
    return np.asarray(sketch_image("circle", 224, box=(50, 50, 170, 170), width=5), dtype=np.uint8)
