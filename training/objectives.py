"""The training objectives: one ``nn.Module`` per family wrapping the model and its loss.

They are modules, not functions, so that DistributedDataParallel wraps the whole forward pass
(model and loss) and sees every parameter that receives a gradient.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn


class ZSEObjective(nn.Module):
    """The ZSE-SBIR loss of a batch of triplets (a module so that DDP sees the forward pass).

    forward(sketch, positive, negative [B, 3, S, S]) -> (total, {"triplet", "relation"[, "ret"]}).
    """

    def __init__(
        self, model: nn.Module, margin: float, triplet_weight: float, relation_weight: float,
        ret_weight: float = 0.0, ret_margin: float = 0.2,
    ) -> None:
        super().__init__()
        self.model = model
        self.margin, self.triplet_weight, self.relation_weight = margin, triplet_weight, relation_weight
        self.ret_weight, self.ret_margin = ret_weight, ret_margin

    def forward(self, sketch: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> Any:
        from models.zse_loss import zse_loss

        out = self.model.training_forward(sketch, positive, negative)  # type: ignore[operator]
        return zse_loss(out, self.margin, self.triplet_weight, self.relation_weight, self.ret_weight,
                        self.ret_margin)


class AMFFObjective(nn.Module):
    """The FFMLN loss of a class-balanced batch; sketches and photos go through the one network together.

    forward(sketches [N, 3, S, S], sketch_labels [N], photos [M, 3, S, S], photo_labels [M])
    -> (total, {"norm", "cls", "sin", "mul", "cro", "total"}).
    """

    def __init__(self, model: nn.Module, lam: float, margin: float, mining: Literal["hard", "all"]) -> None:
        super().__init__()
        self.model = model
        self.lam, self.margin = lam, margin
        self.mining: Literal["hard", "all"] = mining

    def forward(
        self,
        sketches: torch.Tensor,
        sketch_labels: torch.Tensor,
        photos: torch.Tensor,
        photo_labels: torch.Tensor,
    ) -> Any:
        from models.ffmln_loss import ffmln_loss

        embeddings = self.model.encode(torch.cat([sketches, photos])).ret  # type: ignore[operator]
        count = sketches.shape[0]
        return ffmln_loss(
            self.model,
            embeddings[:count],
            sketch_labels,
            embeddings[count:],
            photo_labels,
            lam=self.lam,
            margin=self.margin,
            mining=self.mining,
        )


def unwrap(objective: nn.Module) -> nn.Module:
    """The model inside an objective, itself possibly inside DistributedDataParallel."""
    inner: Any = getattr(objective, "module", objective)
    return inner.model
