"""ZSE-SBIR training loss, with the reference's weights and clamping.

L = 2 * triplet(S_ret, I+_ret, I-_ret; margin 1, p=2) + 4 * MSE(relation scores, targets), where the
[Ret] features are the cross-attention outputs and the targets are 1 for (S, I+) and 0 for (S, I-),
clamped to [0.01, 0.99].

Optional, not in the reference (`ret_weight`, default 0): a triplet term on the self-attention [Ret]
features, L2-normalised as retrieval compares them, so that the ANN shortlist of the two-stage
search learns to rank directly. The reference trains the SA [Ret] only through the cross-attention
above it; it starts from ImageNet ViT weights whose class token already separates images, and a
model trained from scratch (the demo) gets near-constant SA [Ret] features without this term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.zse import TripletOutput

TRIPLET_WEIGHT = 2.0
RELATION_WEIGHT = 4.0
TRIPLET_MARGIN = 1.0
RET_MARGIN = 0.2  # on unit vectors, whose distances lie in [0, 2]
TARGET_CLAMP = (0.01, 0.99)


def zse_loss(
    out: TripletOutput,
    margin: float = TRIPLET_MARGIN,
    triplet_weight: float = TRIPLET_WEIGHT,
    relation_weight: float = RELATION_WEIGHT,
    ret_weight: float = 0.0,
    ret_margin: float = RET_MARGIN,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Returns (total, {"triplet": weighted triplet term, "relation": weighted MSE term, and with
    ret_weight > 0 "ret": the weighted triplet term on the normalised SA [Ret] features})."""
    triplet = F.triplet_margin_loss(out.sketch_ret, out.positive_ret, out.negative_ret, margin=margin, p=2)
    scores = torch.cat([out.positive_scores, out.negative_scores])
    target = torch.cat([torch.ones_like(out.positive_scores), torch.zeros_like(out.negative_scores)])
    relation = F.mse_loss(scores, target.clamp(*TARGET_CLAMP))
    parts = {"triplet": triplet_weight * triplet, "relation": relation_weight * relation}
    if ret_weight > 0:
        anchor, positive, negative = (F.normalize(t, dim=-1) for t in
                                      (out.sketch_sa_ret, out.positive_sa_ret, out.negative_sa_ret))
        parts["ret"] = ret_weight * F.triplet_margin_loss(anchor, positive, negative, margin=ret_margin, p=2)
    total = parts["triplet"] + parts["relation"]
    return (total + parts["ret"] if "ret" in parts else total), parts
