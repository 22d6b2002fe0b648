"""What every retrieval model offers the rest of the project, and the one way to load one.

Both families satisfy :class:`RetrievalModel`:

- ``encode(images [B, 3, S, S], modality) -> Encoded``: ``ret [B, D]`` L2-normalised; ZSE also gives
  ``tokens [B, T, D]`` (and ``kept [B, n]`` with token selection), AMFF none. ZSE keeps a different
  share of tokens per modality; AMFF embeds both modalities with the same network.
- ``has_relation``: whether the model scores a (sketch, photo) pair with a relation network;
  ``relation_scorer(sketch_tokens [1, T, D], sketch_kept)`` gives the fast scorer of one sketch
  against many photos (``models.fast_relation.RelationScorer``), or None for AMFF.

``load(path, device)`` is the single place where a checkpoint is read, hashed (the hash ties an
index to the checkpoint that built it), moved to its device and put in eval mode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from models.device import resolve_device
from models.types import Encoded

MODALITIES = ("sketch", "photo")


@runtime_checkable
class RetrievalModel(Protocol):
    family: str
    has_relation: bool

    @property
    def embed_dim(self) -> int: ...

    def encode(self, images: torch.Tensor, modality: str = "photo") -> Encoded: ...

    def relation_scorer(self, sketch_tokens: torch.Tensor, sketch_kept: torch.Tensor | None = None,
                        int8: Any = None) -> Any | None: ...


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint loaded on its device, with what indexes and reports record about it."""

    model: Any  # a RetrievalModel (an nn.Module in eval mode)
    device: torch.device
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return str(getattr(getattr(self.model, "config", None), "name", "unknown"))

    @property
    def family(self) -> str:
        return str(getattr(self.model, "family", "unknown"))

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def has_relation(self) -> bool:
        return bool(getattr(self.model, "has_relation", False))

    def describe(self) -> dict[str, Any]:
        """The manifest's ``model`` entry."""
        return {"name": self.name, "family": self.family, "embed_dim": self.embed_dim,
                "checkpoint_sha256": self.sha256, "checkpoint_path": str(self.path)}


def load(path: str | os.PathLike[str], device: str | torch.device = "auto") -> LoadedModel:
    """Read the checkpoint at ``path`` onto ``device`` (``auto``, ``cpu``, ``cuda``) in eval mode.

    A missing file or an unusable checkpoint is a one-line :class:`CheckpointError` naming the file
    (``models.checkpoint.read_state``); an unusable device a ``DeviceError``.
    """
    from models.checkpoint import checkpoint_hash, load_checkpoint

    resolved = resolve_device(device)
    checkpoint = Path(path).expanduser().absolute()
    model = load_checkpoint(checkpoint, map_location="cpu").to(resolved).eval()
    return LoadedModel(model, resolved, checkpoint, checkpoint_hash(checkpoint))
