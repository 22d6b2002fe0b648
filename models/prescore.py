"""The pre-scorer: a cheap stand-in for the relation score, the first stage of a re-ranking cascade.

The relation score of a pair needs both cross-attention layers (about 90 % of its cost on zse-tiny,
most of it the attention itself). The pre-scorer skips them: it reads the anchors of each side's
*self-attention* tokens (the model's own downsampling conv, no cross-attention), their cosine kernel,
and a head of the relation network's shape, and is trained to reproduce the relation network's
order over a shortlist (``training.prescore``: distilled from the model it is part of). A
``prescoreM`` re-rank mode (``models.rerank_mode``) pre-scores the whole shortlist and scores only
its best M with the relation network; what that costs in ranking is measured in
benchmarks/RESULTS.md ("Re-ranking modes").

Shapes: P photos, T' = 1 + kept tokens, D width, A = 49 anchors, K kernel channels.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.relation import RelationNetwork


class PreScorer(nn.Module):
    """Kernel of self-attention anchors [P, A, A] -> a relation-score estimate [P] in (0, 1)."""

    def __init__(self, anchors: int, hidden: int, dropout: float) -> None:
        super().__init__()
        # The relation head's shape, so that distillation can start from its weights.
        self.head = RelationNetwork(anchors, hidden, dropout)

    def forward(self, sketch_anchors: torch.Tensor, photo_anchors: torch.Tensor) -> torch.Tensor:
        """sketch_anchors [1 or P, A, K], photo_anchors [P, A, K] -> [P]."""
        sketch = F.normalize(sketch_anchors.float(), dim=-1)
        photo = F.normalize(photo_anchors.float(), dim=-1)
        return self.head(sketch @ photo.transpose(-2, -1))


def self_attention_anchors(model: Any, tokens: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens [B, T', D] (selection undone on the full grid) -> anchors [B, A, K] read by the model's
    downsampling conv, as ``ZSEModel.anchors`` reads the cross-attention output."""
    full, _ = model._full_grid(tokens, kept)
    return model.anchors(full)


@torch.no_grad()
def float32_anchors(model: Any, tokens: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """Anchors float32 [B, A, K] of tokens [B, T', D], with autocast off: what the index stores for
    each photo (``indexer.token_store``) and what a search computes for photos it has none of."""
    with torch.autocast(tokens.device.type, enabled=False):
        return self_attention_anchors(model, tokens.float(), kept).float()


@torch.no_grad()
def prescores(model: Any, sketch_tokens: torch.Tensor, sketch_kept: torch.Tensor | None,
              photo_tokens: torch.Tensor | None = None, photo_kept: torch.Tensor | None = None,
              stored: torch.Tensor | None = None) -> torch.Tensor:
    """Pre-scores [P] float32 of one sketch (tokens [1, T', D]) against P photos: their ``stored``
    anchors [P, A, K] when the index has them, else their tokens [P, T', D].

    All in float32, whatever the caller's autocast: the photos' anchors are stored that way, and a
    half-precision head would tie photos that float32 ranks apart (as in ``models.fast_relation``).
    """
    prescorer = getattr(model, "prescorer", None)
    if prescorer is None:
        raise ValueError(f"{model.config.name}: this checkpoint has no pre-scorer (train one with "
                         "`sbir demo prescore`)")
    if stored is None:
        if photo_tokens is None:
            raise ValueError("prescores needs the photos' tokens or their stored anchors")
        stored = float32_anchors(model, photo_tokens, photo_kept)
    sketch_anchors = float32_anchors(model, sketch_tokens, sketch_kept)
    with torch.autocast(sketch_tokens.device.type, enabled=False):
        head_dtype = prescorer.head.layers[0].weight.dtype
        return prescorer(sketch_anchors.to(head_dtype), stored.to(device=sketch_anchors.device, dtype=head_dtype)).float()
