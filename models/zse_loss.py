"""ZSE-SBIR training loss, with the reference's weights and clamping.

L = 2 * triplet(S_ret, I+_ret, I-_ret; margin 1, p=2) + 4 * MSE(relation scores, targets), where the
[Ret] features are the cross-attention outputs and the targets are 1 for (S, I+) and 0 for (S, I-),
clamped to [0.01, 0.99].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.zse import TripletOutput

TRIPLET_WEIGHT = 2.0
RELATION_WEIGHT = 4.0
TRIPLET_MARGIN = 1.0
TARGET_CLAMP = (0.01, 0.99)


def zse_loss(
    out: TripletOutput,
    margin: float = TRIPLET_MARGIN,
    triplet_weight: float = TRIPLET_WEIGHT,
    relation_weight: float = RELATION_WEIGHT,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Returns (total, {"triplet": weighted triplet term, "relation": weighted MSE term})."""
    triplet = F.triplet_margin_loss(out.sketch_ret, out.positive_ret, out.negative_ret, margin=margin, p=2)
    scores = torch.cat([out.positive_scores, out.negative_scores])
    target = torch.cat([torch.ones_like(out.positive_scores), torch.zeros_like(out.negative_scores)])
    relation = F.mse_loss(scores, target.clamp(*TARGET_CLAMP))
    parts = {"triplet": triplet_weight * triplet, "relation": relation_weight * relation}
    return parts["triplet"] + parts["relation"], parts
