"""int8 linear layers for the relation re-ranking fast mode (``SBIR_RERANK_PRECISION=int8``).

Weights are quantised once, symmetrically per output channel; activations are quantised per row at
each call (dynamic quantisation), multiplied with ``torch._int_mm`` (int8 x int8 -> int32: VNNI /
AMX on x86 CPUs, tensor cores on CUDA) and rescaled in float32. This is the scheme of torchao's
dynamic int8 quantisation, written on the core op because ``torch.ao.quantization``'s quantised
tensors are deprecated. On this project's 2-core CPU one [6272, 768] x [768, 1024] product takes
about 10 ms this way against 62 ms in float32 (benchmarks/RESULTS.md, "fast modes").

Not exact: each product carries the rounding of 8-bit activations and weights, about 1e-2 relative
per element; what that does to rankings is measured, not assumed (``benchmarks/fast_modes.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

INT8_MAX = 127.0


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float -> (int8 [M, K], scale [M, 1] float32) with x ~ int8 * scale (symmetric, per row)."""
    x32 = x.float()
    scale = x32.abs().amax(dim=1, keepdim=True).clamp_min_(1e-12).div_(INT8_MAX)
    return torch.round(x32 / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), scale


@dataclass(frozen=True)
class Int8Linear:
    """y = x W^T + b with W int8 per output channel: weight [K, N] int8 (transposed, as ``_int_mm``
    takes it), scale [N] float32, bias [N] float32 or None."""

    weight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    @classmethod
    def from_weights(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Int8Linear:
        """weight [N, K] float, bias [N] -> the quantised layer on the weight's device."""
        quantized, scale = quantize_rows(weight.detach())
        return cls(quantized.T.contiguous(), scale.squeeze(1),
                   None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> Int8Linear:
        return cls.from_weights(layer.weight, layer.bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] -> [..., N] float32."""
        rows = x.reshape(-1, x.shape[-1])
        quantized, row_scale = quantize_rows(rows)
        product = torch._int_mm(quantized, self.weight).float()  # [M, N] int32 -> float32
        out = product.mul_(row_scale).mul_(self.scale)
        if self.bias is not None:
            out.add_(self.bias)
        return out.view(*x.shape[:-1], self.weight.shape[1])


@dataclass(frozen=True)
class Int8Relation:
    """The quantised linear layers of a ZSE model's relation path.

    photo: the photo-reading projections of both cross-attention layers as one layer (see
    ``models.fast_relation.fused_photo_weights``); layers: (layer name, "out_proj" | "fc1" | "fc2")
    -> Int8Linear. The sketch side (once per query), attention, norms, the downsampling conv and the
    relation head stay in float32.
    """

    photo: Int8Linear
    layers: dict[tuple[str, str], Int8Linear]


LAYER_PARTS = ("out_proj", "fc1", "fc2")


def int8_relation(model: Any) -> Int8Relation:
    """Quantise ``model``'s relation layers once (a copy: build it again after the weights change)."""
    from models.fast_relation import fused_photo_weights

    weight, bias = fused_photo_weights(model)
    layers = {(name, part): Int8Linear.from_linear(getattr(getattr(model.cross, name), part))
              for name in ("sketch_layer", "photo_layer") for part in LAYER_PARTS}
    return Int8Relation(photo=Int8Linear.from_weights(weight, bias), layers=layers)
