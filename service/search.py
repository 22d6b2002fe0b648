"""The search pipeline's stages, as plain functions of (model, index): embed the sketch once,
take an ANN shortlist, score the shortlist with the relation network, order.

No locking and no HTTP here; `service.engine.SearchEngine` decides which thread runs them.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.fast_relation import RelationScorer, supports_fast_relation

logger = logging.getLogger("service.search")


@dataclass(frozen=True)
class Tokens:
    """Tokens as `relation` / `kernel` take them: tokens [B, T, D], kept None or [B, N]."""

    tokens: torch.Tensor
    kept: torch.Tensor | None = None

    def to(self, device: torch.device) -> Tokens:
        kept = None if self.kept is None else self.kept.to(device)
        return Tokens(self.tokens.to(device=device, dtype=torch.float32), kept)


@dataclass(frozen=True)
class SketchEmbedding:
    """One sketch: ret [1, D] float32 numpy (for FAISS), tokens on the CPU (None for AMFF)."""

    ret: np.ndarray
    tokens: Tokens | None


@dataclass(frozen=True)
class Shortlist:
    """ANN candidates, best first: ids int64 [P], ann_scores float32 [P] (FAISS pads removed)."""

    ids: np.ndarray
    ann_scores: np.ndarray


def can_rerank(model: Any) -> bool:
    """True for models with a relation network (ZSE); AMFF checkpoints have none."""
    return getattr(model, "family", None) == "zse" and callable(getattr(model, "relation", None))


def _encode(model: Any, images: torch.Tensor, modality: str):
    # ZSE encodes sketches and photos with different token keep rates; AMFF's encode has no modality.
    if "modality" in inspect.signature(model.encode).parameters:
        return model.encode(images, modality=modality)
    return model.encode(images)


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager[Any]:
    """float16 autocast on CUDA when enabled; a no-op on the CPU, which stays float32 (CPU bfloat16 is faster
    where the CPU has bf16 instructions but changes the scores: see benchmarks/RESULTS.md)."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return nullcontext()


def embed_sketch(model: Any, sketch: torch.Tensor, device: torch.device, amp: bool = False) -> SketchEmbedding:
    """sketch [3, 224, 224] (preprocessed) -> its retrieval vector and tokens."""
    return embed_sketches(model, sketch.unsqueeze(0), device, amp)[0]


def embed_sketches(model: Any, sketches: torch.Tensor, device: torch.device, amp: bool = False
                   ) -> list[SketchEmbedding]:
    """sketches [B, 3, 224, 224] (preprocessed) -> B embeddings, from one forward pass.

    Each sketch's result equals embedding it alone (the encoder has no cross-sample interaction),
    up to the float rounding of a different batch size.
    """
    with torch.inference_mode(), autocast(device, amp):
        encoded = _encode(model, sketches.to(device), "sketch")
    rets = encoded.ret.detach().float().cpu().numpy().astype(np.float32, copy=False)
    tokens = None if encoded.tokens is None else encoded.tokens.detach().float().cpu()
    kept = None if encoded.kept is None else encoded.kept.detach().cpu()
    return [
        SketchEmbedding(
            ret=rets[row : row + 1],
            # clone(): a view would keep the whole batch's tokens alive in the query cache.
            tokens=None if tokens is None else Tokens(tokens[row : row + 1].clone(),
                                                      None if kept is None else kept[row : row + 1].clone()),
        )
        for row in range(sketches.shape[0])
    ]


def ann_shortlist(index, vector: np.ndarray, size: int) -> Shortlist:
    """The `size` nearest photos of `vector` [1, D] by the index's ANN search."""
    ids, scores = index.search(np.ascontiguousarray(vector, dtype=np.float32), size)
    ids, scores = np.asarray(ids)[0], np.asarray(scores)[0]
    valid = ids >= 0
    return Shortlist(ids=ids[valid].astype(np.int64), ann_scores=scores[valid].astype(np.float32))


def load_photo(path) -> Image.Image:
    """A gallery photo, decoded and RGB (transparency composited onto white)."""
    from models.preprocess import to_rgb

    with Image.open(path) as image:
        image.load()
        return to_rgb(image)


def photo_tokens(model: Any, index, ids: Sequence[int] | np.ndarray, device: torch.device) -> Tokens:
    """Tokens [P, T, D] of gallery photos on `device`: the index's token store when it has one,
    else recomputed from the photo files (slower, same numbers up to the store's precision)."""
    ids = [int(image_id) for image_id in ids]
    if index.has_tokens:
        # Kept positions exist only for models with token selection; `kept` is optional on indexes.
        kept = index.kept(ids) if callable(getattr(index, "kept", None)) else None
        return Tokens(index.tokens(ids), kept).to(device)
    from models import preprocess

    batch = torch.stack([preprocess.photo(load_photo(index.record(image_id).path)) for image_id in ids])
    with torch.inference_mode():
        encoded = _encode(model, batch.to(device), "photo")
    return Tokens(encoded.tokens, encoded.kept)


def relation_scores(
    model: Any,
    index,
    sketch_tokens: Tokens,
    ids: np.ndarray,
    batch_size: int,
    device: torch.device,
    amp: bool = False,
) -> np.ndarray:
    """Relation scores [P] float32 in (0, 1) of the sketch against each photo in `ids`, computed
    `batch_size` photos at a time on `device`.

    ZSE models go through `models.fast_relation.RelationScorer`: the sketch side is computed once
    per query, and each batch's photo tokens are read (and dequantised) from the store only when
    that batch is scored. Other models with a `relation` method are called batch by batch.
    """
    sketch = sketch_tokens.to(device)
    scores = np.empty(len(ids), dtype=np.float32)
    with torch.inference_mode(), autocast(device, amp):
        scorer = RelationScorer(model, sketch.tokens, sketch.kept) if supports_fast_relation(model) else None
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            photos = photo_tokens(model, index, chunk, device)
            if scorer is not None:
                batch_scores = scorer.score(photos.tokens, photos.kept)
            else:
                batch_scores = model.relation(sketch.tokens, photos.tokens, sketch.kept, photos.kept)
            scores[start : start + len(chunk)] = batch_scores.float().cpu().numpy()
    return scores


def order_by_relation(relation: np.ndarray) -> np.ndarray:
    """Positions [P] of the shortlist sorted by relation score, highest first; ties keep ANN order."""
    return np.argsort(-relation, kind="stable")


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """Preprocessed [3, H, W] (normalised with preprocess.MEAN / STD) -> the RGB image the model saw."""
    from models.preprocess import MEAN, STD

    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    pixels = (tensor.detach().float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()))
