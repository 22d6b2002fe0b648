"""Tiny models written to disk in the real checkpoint format (`models.save_checkpoint`).

The weights are random but seeded: the same (model, seed, overrides) always writes the same
checkpoint, so tests may compare what two of them produce.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

# The input size the training and evaluation tests give the tiny models (a 4x4 token grid), small
# enough that a step takes well under a second on two CPU cores.
IMAGE_SIZE = 64


def write_checkpoint(path: Path, model: str | Any = "zse-tiny", seed: int = 0, pretrained: bool = True,
                     **overrides: Any) -> Path:
    """`model` (a preset name or a config, with ``overrides`` of its config fields) built right after
    ``torch.manual_seed(seed)`` and saved to ``path``; returns the path."""
    import torch

    import models

    config = model
    if overrides:
        if isinstance(model, str):
            from models.amff import AMFF_PRESETS
            from models.config import ZSE_PRESETS

            model = {**ZSE_PRESETS, **AMFF_PRESETS}[model]
        config = dataclasses.replace(model, **overrides)
    torch.manual_seed(seed)
    return models.save_checkpoint(models.build_model(config, pretrained=pretrained), path)
