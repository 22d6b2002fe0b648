"""Offline gallery indexer: photos -> FAISS index + token store, and the read side used by the service.

    indexer.build(gallery, checkpoint, out, ...) -> Path
    indexer.add(directory, gallery, checkpoint, ...) -> Path
    indexer.open(directory, checkpoint_hash=None) -> GalleryIndex

Names are imported on first use so that `import indexer` (e.g. by the CLI) does not import torch or faiss.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from indexer.errors import FactoryError, GalleryError, IndexerError, IndexMismatchError

_EXPORTS = {
    "build": ("indexer.pipeline", "build"),
    "add": ("indexer.pipeline", "add"),
    "open": ("indexer.gallery_index", "open_index"),
    "GalleryIndex": ("indexer.gallery_index", "GalleryIndex"),
    "ImageRecord": ("indexer.records", "ImageRecord"),
    "read_gallery": ("indexer.gallery", "read_gallery"),
    "default_factory": ("indexer.faiss_index", "default_factory"),
}

__all__ = [
    "FactoryError", "GalleryError", "GalleryIndex", "ImageRecord", "IndexMismatchError", "IndexerError",
    "add", "build", "default_factory", "open", "read_gallery",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        return getattr(import_module(module), attribute)
    raise AttributeError(f"module 'indexer' has no attribute {name!r}")
