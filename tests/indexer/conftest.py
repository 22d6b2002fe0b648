"""Fixtures for the indexer tests: a second zse-tiny checkpoint (the first, `checkpoint`, is shared from
tests/conftest.py) and a direct `model.encode` of given files to compare the index against. The
generated galleries come from tests.support.datasets."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support.checkpoints import write_checkpoint


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("other") / "zse-tiny-other.pt", "zse-tiny", seed=1)


@pytest.fixture(scope="session")
def encode_direct(checkpoint: Path) -> Callable[[list[Path]], tuple[np.ndarray, np.ndarray]]:
    """Files -> (ret float32 [B, D], tokens float32 [B, T, D]) straight from `model.encode`,
    independently of the indexer's DataLoader, shards and stores."""
    import models
    from models import preprocess

    model = models.load_checkpoint(checkpoint)

    def encode(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        images = []
        for path in paths:
            with Image.open(path) as image:
                images.append(preprocess.photo(image))
        with torch.inference_mode():
            encoded = model.encode(torch.stack(images))
        return encoded.ret.float().numpy(), encoded.tokens.float().numpy()

    return encode
