"""The cosine kernel between sketch and photo anchors, and the relation network that scores it."""

from __future__ import annotations

import torch
from torch import nn


def cosine_kernel(sketch_anchors: torch.Tensor, photo_anchors: torch.Tensor) -> torch.Tensor:
    """M[p, i, j] = cos(sketch_anchors[p, i], photo_anchors[p, j]).

    sketch_anchors [P, A, K], photo_anchors [P, A, K] -> [P, A, A]. A zero-norm anchor gives NaN in
    the reference's formula, which it replaces by 0; the same is done here.
    """
    dots = sketch_anchors @ photo_anchors.transpose(-2, -1)
    sketch_norm = sketch_anchors.norm(dim=-1)
    photo_norm = photo_anchors.norm(dim=-1)
    kernel = dots / sketch_norm.unsqueeze(-1) / photo_norm.unsqueeze(-2)
    return torch.nan_to_num(kernel, nan=0.0, posinf=0.0, neginf=0.0)


class RelationNetwork(nn.Module):
    """Flattened kernel [P, A*A] -> Linear(A*A, hidden) -> ReLU -> Dropout -> Linear(hidden, A) -> ReLU
    -> Dropout -> Linear(A, 1) -> sigmoid: a score in (0, 1) per pair."""

    def __init__(self, anchors: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(anchors * anchors, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, anchors),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(anchors, 1),
        )

    def forward(self, kernel: torch.Tensor) -> torch.Tensor:
        """kernel [P, A, A] -> relation scores [P]."""
        return torch.sigmoid(self.layers(kernel.flatten(1))).squeeze(-1)
