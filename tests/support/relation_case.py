"""One sketch and 12 photos through a zse-tiny whose relation scores spread over (0, 1), and the
re-ranking path's scores for them in a given mode: the case the re-rank mode tests share."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

import models
from indexer import retrieval
from models.config import ZSE_PRESETS
from models.rerank_mode import Reranking, RerankMode


def spread_case(prescorer: bool = False) -> tuple[Any, Any, Any, np.ndarray]:
    """(model, sketch Encoded, photos Encoded, exact relation scores [12]); with ``prescorer``, the model
    has a pre-scorer whose head is spread the same way."""
    torch.manual_seed(0)
    model = models.build_model(dataclasses.replace(ZSE_PRESETS["zse-tiny"], prescorer=prescorer)).eval()
    with torch.no_grad():
        # A random head scores every pair near 0.5; a steeper last layer spreads the scores.
        model.relation_head.layers[-1].weight.mul_(50.0)
        if model.prescorer is not None:
            model.prescorer.head.layers[-1].weight.mul_(50.0)
    images = torch.rand(13, 3, 224, 224, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.inference_mode():
        sketch = model.encode(images[:1], "sketch")
        photos = model.encode(images[1:], "photo")
        exact = model.relation(sketch.tokens, photos.tokens).numpy()
    return model, sketch, photos, exact


def mode_scores(case: tuple[Any, Any, Any, np.ndarray], mode: str, ids: np.ndarray, batch_size: int = 5
                ) -> np.ndarray:
    """``indexer.retrieval.relation_scores`` of the case's sketch against photos ``ids`` in ``mode``."""
    model, sketch, photos, _ = case
    gallery = retrieval.EmbeddedGallery(photos.ret, photos.tokens, photos.kept)
    return retrieval.relation_scores(model, gallery, retrieval.Tokens(sketch.tokens), ids, batch_size,
                                     torch.device("cpu"), reranking=Reranking.prepare(model, RerankMode.parse(mode)))
