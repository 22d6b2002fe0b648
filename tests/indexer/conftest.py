"""Fixtures for the indexer tests: a real `zse-tiny` checkpoint, generated PNG galleries, and a
direct `model.encode` of given files to compare the index against."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


def make_png(path: Path, seed: int, size: int = 64) -> Path:
    """A 64x64 photo-like PNG: a colour gradient plus noise, different for every seed."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    base = rng.uniform(0, 255, 3).astype(np.float32)
    slope = rng.uniform(-120, 120, (2, 3)).astype(np.float32)
    pixels = base + ramp[:, None, None] * slope[0] + ramp[None, :, None] * slope[1]
    pixels += rng.normal(0, 25, (size, size, 3)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def make_folder_gallery(root: Path, per_class: dict[str, int], seed: int = 0) -> list[Path]:
    """`root/<class>/<i>.png`; returns the files in sorted relative-path order (= id order)."""
    files = []
    for number, (label, count) in enumerate(sorted(per_class.items())):
        for i in range(count):
            files.append(make_png(root / label / f"{i:02d}.png", seed=seed + 100 * number + i))
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def hash_tree(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path."""
    return {
        path.relative_to(directory).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised zse-tiny saved with `models.save_checkpoint` (the real format)."""
    import models

    torch.manual_seed(0)
    model = models.build_model("zse-tiny")
    return models.save_checkpoint(model, tmp_path_factory.mktemp("checkpoint") / "zse-tiny.pt")


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import models

    torch.manual_seed(1)
    model = models.build_model("zse-tiny")
    return models.save_checkpoint(model, tmp_path_factory.mktemp("other") / "zse-tiny-other.pt")


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
