"""Small training configs for the tests: zse-tiny at the support image size, 2-triplet batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.checkpoints import IMAGE_SIZE


def with_sections(config: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``config`` with each section of ``changes`` merged into it (a dict) or replacing it (anything else)."""
    for section, values in changes.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    return config


def zse_config(run_dir: Path, root: Path, dataset: str = "tuberlin", **changes: Any) -> dict[str, Any]:
    """A small ZSE run: zse-tiny at 64 px, 2-triplet batches, 3 steps an epoch, 2 epochs."""
    config: dict[str, Any] = {
        "run_dir": str(run_dir),
        "seed": 7,
        "model": {"name": "zse-tiny", "overrides": {"image_size": IMAGE_SIZE}},
        "data": {"dataset": dataset, "root": str(root), "num_workers": 0},
        "optim": {"lr": 1e-4},
        "zse": {"batch_size": 2},
        "schedule": {"epochs": 2, "epoch_size": 6, "log_every": 1},
        "validation": {"batch_size": 8, "quick": False},
    }
    return with_sections(config, changes)
