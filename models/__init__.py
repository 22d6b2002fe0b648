"""ZSE-SBIR and FFMLN/AMFF models: construction, checkpoints, preprocessing.

Attributes are imported on first use so that `import models` (e.g. by the CLI) stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "build_model": "models.registry",
    "preset_names": "models.registry",
    "load": "models.interface",
    "LoadedModel": "models.interface",
    "RetrievalModel": "models.interface",
    "load_checkpoint": "models.checkpoint",
    "save_checkpoint": "models.checkpoint",
    "checkpoint_hash": "models.checkpoint",
    "Encoded": "models.types",
    "CheckpointError": "models.types",
    "ZSEConfig": "models.config",
    "ZSEModel": "models.zse",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
