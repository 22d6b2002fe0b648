"""The one retrieval path: embed the sketch once, take an ANN shortlist, re-rank it with the relation
network, order.

The service's search (``service.engine``), ``sbir evaluate`` in its two-stage and exhaustive modes
(``training.evaluate``), the explanations and the benchmarks all call these functions; nothing else
scores a (sketch, photo) pair for retrieval. No locking and no HTTP here: the caller decides which
thread runs them.

A *gallery* is anything with the read side of ``indexer.GalleryIndex`` that the path uses:
``search(vectors [Q, D], k) -> (ids [Q, k], scores [Q, k])``, ``has_tokens``, ``tokens(ids)``,
``kept(ids)``, ``anchors(ids)`` (stored pre-scorer anchors, or None) and ``record(id).path``. A
published index is one; :class:`EmbeddedGallery` is another, for photos already embedded in memory (an
evaluation), searched through the same FAISS index type that ``sbir index build`` would choose for its
size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.device import autocast
from models.rerank_mode import EXACT, Reranking

logger = logging.getLogger("indexer.retrieval")


@dataclass(frozen=True)
class Tokens:
    """Tokens as ``relation`` / ``kernel`` take them: tokens [B, T, D], kept None or [B, N]."""

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
    return bool(getattr(model, "has_relation", False))


# ----------------------------------------------------------------------------------------------
# 1. Embed


def embed_sketches(model: Any, sketches: torch.Tensor, device: torch.device, amp: bool = False,
                   reranking: Reranking = EXACT) -> list[SketchEmbedding]:
    """sketches [B, 3, 224, 224] (preprocessed) -> B embeddings, from one forward pass.

    Each sketch's result equals embedding it alone (the encoder has no cross-sample interaction),
    up to the float rounding of a different batch size. A bf16 ``reranking`` mode embeds in
    bfloat16 too (the query's share of the model; the gallery keeps its float32 embeddings).
    """
    with torch.inference_mode(), autocast(device, reranking.mode.autocast_dtype(device, amp)):
        encoded = model.encode(sketches.to(device), "sketch")
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


def embed_sketch(model: Any, sketch: torch.Tensor, device: torch.device, amp: bool = False,
                 reranking: Reranking = EXACT) -> SketchEmbedding:
    """sketch [3, 224, 224] (preprocessed) -> its retrieval vector and tokens."""
    return embed_sketches(model, sketch.unsqueeze(0), device, amp, reranking)[0]


# ----------------------------------------------------------------------------------------------
# 2. Shortlist


def shortlists(gallery: Any, vectors: np.ndarray, size: int) -> list[Shortlist]:
    """The ``size`` nearest photos of each query vector [Q, D] by the gallery's ANN search."""
    ids, scores = gallery.search(np.ascontiguousarray(vectors, dtype=np.float32), size)
    result = []
    for row_ids, row_scores in zip(np.asarray(ids), np.asarray(scores), strict=True):
        valid = row_ids >= 0
        result.append(Shortlist(ids=row_ids[valid].astype(np.int64), ann_scores=row_scores[valid].astype(np.float32)))
    return result


def shortlist(gallery: Any, vector: np.ndarray, size: int) -> Shortlist:
    """The ``size`` nearest photos of one query ``vector`` [1, D]."""
    return shortlists(gallery, vector, size)[0]


# ----------------------------------------------------------------------------------------------
# 3. Re-rank


def photo_tokens(model: Any, gallery: Any, ids: Sequence[int] | np.ndarray, device: torch.device) -> Tokens:
    """Tokens [P, T, D] of gallery photos on ``device``: the gallery's token store when it has one,
    else recomputed from the photo files (slower, same numbers up to the store's precision)."""
    ids = [int(image_id) for image_id in ids]
    if gallery.has_tokens:
        return Tokens(gallery.tokens(ids), gallery.kept(ids)).to(device)
    from models import preprocess

    batch = torch.stack([preprocess.photo(preprocess.load_rgb(gallery.record(image_id).path)) for image_id in ids])
    with torch.inference_mode():
        encoded = model.encode(batch.to(device), "photo")
    return Tokens(encoded.tokens, encoded.kept)


def relation_scores(
    model: Any,
    gallery: Any,
    sketch_tokens: Tokens,
    ids: Sequence[int] | np.ndarray,
    batch_size: int,
    device: torch.device,
    amp: bool = False,
    reranking: Reranking = EXACT,
) -> np.ndarray:
    """Relation scores [P] float32 in (0, 1) of the sketch against each photo in ``ids`` (in that
    order), computed ``batch_size`` photos at a time on ``device``.

    The model's relation scorer (``model.relation_scorer``, the fastest exact path) computes the
    sketch side once per query; each batch's photo tokens are read (and dequantised) from the
    gallery only when that batch is scored. ``reranking`` picks the precision
    (``models.rerank_mode``); with a cascade of M, the M best photos of the fast scores are scored
    again exactly; with a prescore stage of M, every photo is pre-scored (``models.prescore``) and
    the M best of that order get relation scores. Either way the others' first-stage scores are
    lowered by one common offset where needed so that none ranks above a rescored one (their order
    among themselves is kept).
    """
    mode = reranking.mode
    if mode.prescore and len(ids):
        return _prescored(model, gallery, sketch_tokens, ids, batch_size, device, amp, reranking)
    scores = _scores(model, gallery, sketch_tokens, ids, batch_size, device, amp, reranking)
    if not mode.cascade or len(ids) == 0:
        return scores
    top = np.argsort(-scores, kind="stable")[: mode.cascade]
    exact = _scores(model, gallery, sketch_tokens, np.asarray(ids)[top], batch_size, device, amp, EXACT)
    return _rescored(scores, top, exact)


def _rescored(first: np.ndarray, top: np.ndarray, rescored: np.ndarray) -> np.ndarray:
    """First-stage scores [P] with positions ``top`` replaced by their second-stage scores, the rest
    lowered by one common offset (only if needed) to rank below every rescored photo."""
    scores = first.astype(np.float32, copy=True)
    rest = np.ones(len(scores), dtype=bool)
    rest[top] = False
    if rest.any():
        excess = float(scores[rest].max()) - float(rescored.min())
        if excess >= 0:
            scores[rest] -= np.float32(excess) + np.float32(1e-6)
    scores[top] = rescored
    return scores


def _prescored(model: Any, gallery: Any, sketch_tokens: Tokens, ids: Sequence[int] | np.ndarray, batch_size: int,
               device: torch.device, amp: bool, reranking: Reranking) -> np.ndarray:
    """The prescore stage: every photo pre-scored, the best ``prescore`` of them relation-scored in the
    mode's precision.

    With the photos' anchors stored in the index, only the chosen photos' tokens are read; else the
    whole shortlist's tokens are read once and its anchors computed from them (the same numbers).
    """
    from models.prescore import float32_anchors, prescores

    sketch = sketch_tokens.to(device)
    stored = gallery.anchors(ids) if gallery.has_tokens else None
    photos = None
    # The pre-scores are float32 whatever the mode (models.prescore), so no autocast around them.
    with torch.inference_mode():
        if stored is None:  # the whole shortlist's tokens, read once: its anchors now, the chosen ones' later
            photos = photo_tokens(model, gallery, ids, device)
            stored = float32_anchors(model, photos.tokens, photos.kept)
        # One call for the whole shortlist: the sketch's anchors once, and only anchors [P, A, K] to hold.
        first = prescores(model, sketch.tokens, sketch.kept, stored=stored.to(device)).cpu().numpy()
    top = np.argsort(-first, kind="stable")[: reranking.mode.prescore]
    if photos is None:
        photos = photo_tokens(model, gallery, np.asarray(ids)[top], device)  # only the chosen photos'
        chosen = torch.arange(len(top), device=photos.tokens.device)
    else:
        chosen = torch.as_tensor(top, dtype=torch.long, device=photos.tokens.device)
    with torch.inference_mode(), autocast(device, reranking.mode.autocast_dtype(device, amp)):
        scorer = model.relation_scorer(sketch.tokens, sketch.kept, reranking.int8)
        rescored = np.concatenate([
            scorer.score(photos.tokens[chosen[start:start + batch_size]],
                         None if photos.kept is None else photos.kept[chosen[start:start + batch_size]])
            .float().cpu().numpy() for start in range(0, len(top), batch_size)])
    return _rescored(first, top, rescored)


def _scores(model: Any, gallery: Any, sketch_tokens: Tokens, ids: Sequence[int] | np.ndarray, batch_size: int,
            device: torch.device, amp: bool, reranking: Reranking) -> np.ndarray:
    """Every photo of ``ids`` scored in ``reranking``'s precision: [P] float32."""
    sketch = sketch_tokens.to(device)
    scores = np.empty(len(ids), dtype=np.float32)
    with torch.inference_mode(), autocast(device, reranking.mode.autocast_dtype(device, amp)):
        scorer = model.relation_scorer(sketch.tokens, sketch.kept, reranking.int8)
        if scorer is None:
            raise ValueError(f"{getattr(model, 'family', '?')} models have no relation network to re-rank with")
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            photos = photo_tokens(model, gallery, chunk, device)
            scores[start : start + len(chunk)] = scorer.score(photos.tokens, photos.kept).float().cpu().numpy()
    return scores


def ranking_scores(relation: np.ndarray, ann_scores: np.ndarray, ann_weight: float = 0.0) -> np.ndarray:
    """The score a re-ranked shortlist is ordered by: relation [P] + ann_weight * ann_scores [P], float32.

    ann_weight 0 is the paper's rule (the relation score alone). The demo model ranks better with
    the [Ret] cosine added at weight 1 (benchmarks/RESULTS.md, "Demo model quality"): the two stages
    make different mistakes.
    """
    relation = np.asarray(relation, dtype=np.float32)
    if not ann_weight:
        return relation
    return relation + np.float32(ann_weight) * np.asarray(ann_scores, dtype=np.float32)


def order_by_relation(scores: np.ndarray) -> np.ndarray:
    """Positions [P] of the shortlist sorted by ranking score (``ranking_scores``), highest first;
    ties keep ANN order."""
    return np.argsort(-scores, kind="stable")


# ----------------------------------------------------------------------------------------------
# A gallery already in memory


class EmbeddedGallery:
    """Photos embedded in memory (ret [G, D] L2-normalised, tokens [G, T, D], kept [G, n]), with ids
    0..G-1, searched by the FAISS index ``sbir index build`` would build for G photos."""

    def __init__(self, ret: torch.Tensor, tokens: torch.Tensor | None = None, kept: torch.Tensor | None = None,
                 *, factory: str | None = None) -> None:
        from indexer import faiss_index

        vectors = np.ascontiguousarray(ret.float().cpu().numpy(), dtype=np.float32)
        count, dim = vectors.shape
        self.factory = factory or faiss_index.default_factory(count, dim)
        self._index = faiss_index.build_index(vectors, np.arange(count, dtype=np.int64), self.factory)
        self._tokens = tokens
        self._kept = kept

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def has_tokens(self) -> bool:
        return self._tokens is not None

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """ids int64 [Q, k], inner-product scores float32 [Q, k], best first (padded with -1)."""
        scores, ids = self._index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        return ids.astype(np.int64, copy=False), scores.astype(np.float32, copy=False)

    def tokens(self, ids: Sequence[int]) -> torch.Tensor:
        assert self._tokens is not None
        return self._tokens.index_select(0, torch.as_tensor(list(ids), dtype=torch.long, device=self._tokens.device))

    def kept(self, ids: Sequence[int]) -> torch.Tensor | None:
        if self._kept is None:
            return None
        return self._kept.index_select(0, torch.as_tensor(list(ids), dtype=torch.long, device=self._kept.device))

    def anchors(self, ids: Sequence[int]) -> None:
        return None  # computed from the tokens in memory when a prescore search needs them

    def record(self, image_id: int) -> Any:
        raise KeyError(image_id)  # no files behind an embedded gallery; its tokens are always there
