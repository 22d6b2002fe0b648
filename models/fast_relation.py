"""Fast relation scoring of one sketch against many photos: the re-ranking hot path.

Computes the same scores as `ZSEModel.relation(sketch_tokens[:1], photo_tokens)` (to float rounding),
restructured for throughput:

- The sketch side is computed once per query (`RelationScorer.__init__`), not once per photo chunk:
  every projection whose input is the sketch (reference form: the sketch layer's q and v and the photo
  layer's k) and the sketch layer's residual.
- The photo side needs no sketch (`prepare_photos`): the projections whose input is the photo are one
  GEMM with the weights concatenated. Callers that score the same photos against many sketches (an
  exhaustive evaluation) prepare them once and reuse them.
- The [Ret] query row of each cross-attention layer is skipped: the anchors read only the N grid tokens,
  so that row's output is never used (its key still is).
- The post-norm with the reference's unbiased std is torch's fused layer norm plus one fused
  multiply-add (see `unbiased_post_norm`) instead of five passes over the activations.

Shapes: P photos, T = 1 + N tokens (N = 196 on the 14x14 grid), D width, H heads, A = 49 anchors,
K kernel channels. Works unchanged on CUDA; under autocast the norms run in float32.

Fast modes (not exact; their cost in ranking is measured in benchmarks/RESULTS.md): the caller's
bfloat16 autocast, or ``int8``, the photo projections and each layer's out_proj / fc1 / fc2 as int8
products (``models.int8``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.cross_attention import UnbiasedLayerNorm
from models.int8 import Int8Relation

# Which input each projection of each cross-attention layer reads, per form (see models.cross_attention).
PROJECTION_SOURCES = {
    "reference": {"sketch_layer": ("sketch", "photo", "sketch"), "photo_layer": ("photo", "sketch", "photo")},
    "paper": {"sketch_layer": ("sketch", "photo", "photo"), "photo_layer": ("photo", "sketch", "sketch")},
}
_ROLES = ("q", "k", "v")


def unbiased_post_norm(x: torch.Tensor, norm: UnbiasedLayerNorm) -> torch.Tensor:
    """`UnbiasedLayerNorm`: w * (x - mean) / (std_unbiased + eps) + b over the last dim, x [..., D].

    Built on torch's fused layer norm, which returns the biased 1 / std per row alongside
    w * (x - mean) / std; one more fused multiply-add rescales that to the reference's unbiased std
    with the epsilon added to the std. About 6x faster than the three-pass formula on a CPU.
    Statistics in float32 (half precision loses the std); returns x's dtype.
    """
    x32 = x.float()
    dim = x32.shape[-1]
    # A tiny epsilon only keeps a constant row finite (its output is then the bias, as the reference's).
    scaled, _, rstd = torch.native_layer_norm(x32, (dim,), norm.weight.float(), None, 1e-12)
    unbiased_std = rstd.reciprocal() * (dim / (dim - 1)) ** 0.5
    factor = (rstd * (unbiased_std + norm.eps)).reciprocal()  # [..., 1]: biased std / (unbiased std + eps)
    return torch.addcmul(norm.bias.float(), scaled, factor).to(x.dtype)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, D] -> [B, H, T, D / H]."""
    batch, count, dim = x.shape
    return x.view(batch, count, heads, dim // heads).transpose(1, 2)


def _projection(layer: nn.Module, role: str) -> nn.Linear:
    return getattr(layer, f"{role}_proj")


@dataclass
class PreparedPhotos:
    """The sketch-independent part of scoring photos.

    tokens [P, T, D] on the full grid (token selection undone); projected: (layer, role) ->
    [P, H, T, D / H] for every projection that reads the photo; key_mask [P, T] bool or None.
    """

    tokens: torch.Tensor
    projected: dict[tuple[str, str], torch.Tensor]
    key_mask: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def _full_grid(model: Any, tokens: torch.Tensor, kept: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
    # The model's own restoration (zeros in dropped slots, a key mask), so both paths agree exactly.
    return model._full_grid(tokens, kept)


def _photo_projections(model: Any) -> list[tuple[str, str]]:
    sources = PROJECTION_SOURCES[model.cross.form]
    return [(name, role) for name in ("sketch_layer", "photo_layer")
            for role, source in zip(_ROLES, sources[name], strict=True) if source == "photo"]


def fused_photo_weights(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The photo-reading projections' weights stacked: ([n * D, D], [n * D]), n = 3 in both forms.

    A copy of the weights: build it again after the weights change.
    """
    projections = [_projection(getattr(model.cross, name), role) for name, role in _photo_projections(model)]
    return (torch.cat([p.weight.detach() for p in projections]), torch.cat([p.bias.detach() for p in projections]))


@torch.no_grad()
def prepare_photos(model: Any, photo_tokens: torch.Tensor, photo_kept: torch.Tensor | None = None,
                   weights: tuple[torch.Tensor, torch.Tensor] | None = None,
                   int8: Int8Relation | None = None) -> PreparedPhotos:
    """Photo tokens [P, T', D] (T' = 1 + kept count) -> PreparedPhotos on their device.

    weights: `fused_photo_weights(model)`, when the caller keeps it across calls; int8: the int8
    layers (`models.int8.int8_relation`) to project with instead.
    """
    tokens, mask = _full_grid(model, photo_tokens, photo_kept)
    if int8 is not None:
        fused = int8.photo(tokens).to(tokens.dtype)  # [P, T, n * D]
    else:
        weight, bias = fused_photo_weights(model) if weights is None else weights
        fused = F.linear(tokens, weight.to(tokens.dtype), bias.to(tokens.dtype))  # [P, T, n * D]
    dim = tokens.shape[-1]
    projected = {}
    for number, (name, role) in enumerate(_photo_projections(model)):
        layer = getattr(model.cross, name)
        projected[(name, role)] = _heads(fused[..., number * dim:(number + 1) * dim], layer.heads)
    return PreparedPhotos(tokens=tokens, projected=projected, key_mask=mask)


class RelationScorer:
    """Relation scores of one sketch against any number of photos, the sketch side computed once.

    >>> scorer = RelationScorer(model, sketch_tokens, sketch_kept)   # sketch_tokens [1, T', D]
    >>> scores = scorer.score(photo_tokens, photo_kept)              # [P] in (0, 1)

    `model` is a `ZSEModel` in eval mode (dropout is not applied here); no gradients are recorded.
    With ``int8`` (`models.int8.int8_relation(model)`), the photo projections and each layer's
    out_proj / fc1 / fc2 are int8 products: a fast mode, not exact.
    """

    @torch.no_grad()
    def __init__(self, model: Any, sketch_tokens: torch.Tensor, sketch_kept: torch.Tensor | None = None,
                 int8: Int8Relation | None = None) -> None:
        if sketch_tokens.shape[0] != 1:
            raise ValueError(f"RelationScorer takes one sketch, got sketch_tokens of shape {tuple(sketch_tokens.shape)}")
        self.model = model
        self.int8 = int8
        # int8 projects the photos with its own quantised copy: no float32 concatenation per query.
        self.photo_weights = fused_photo_weights(model) if int8 is None else None
        sources = PROJECTION_SOURCES[model.cross.form]
        tokens, mask = _full_grid(model, sketch_tokens, None if sketch_kept is None else sketch_kept[:1])
        self.sketch_mask = mask  # keys of the photo layer (the sketch's dropped slots are masked out)
        self.sketch_residual = tokens[:, 1:]  # [1, N, D]: the sketch layer's residual, [Ret] row skipped
        # Sketch-side projections [1, H, T, D / H]; q rows of [Ret] are dropped when used (see below).
        self.sketch_projected: dict[tuple[str, str], torch.Tensor] = {}
        for name in ("sketch_layer", "photo_layer"):
            layer = getattr(model.cross, name)
            for role, source in zip(_ROLES, sources[name], strict=True):
                if source == "sketch":
                    self.sketch_projected[(name, role)] = _heads(_projection(layer, role)(tokens), layer.heads)

    def _input(self, photos: PreparedPhotos, name: str, role: str) -> torch.Tensor:
        found = self.sketch_projected.get((name, role))
        return photos.projected[(name, role)] if found is None else found

    def _linear(self, name: str, part: str, x: torch.Tensor) -> torch.Tensor:
        """One of a cross-attention layer's out_proj / fc1 / fc2 applied to x [P, N, D_in]."""
        if self.int8 is None:
            return getattr(getattr(self.model.cross, name), part)(x)
        return self.int8.layers[(name, part)](x).to(x.dtype)

    def _layer(self, name: str, photos: PreparedPhotos, residual: torch.Tensor, key_mask: torch.Tensor | None
               ) -> torch.Tensor:
        """One cross-attention layer for the N grid queries: [P, N, D]."""
        layer = getattr(self.model.cross, name)
        q = self._input(photos, name, "q")[:, :, 1:]  # skip the [Ret] query row: its output is unused
        k, v = self._input(photos, name, "k"), self._input(photos, name, "v")
        pairs = len(photos)
        q, k, v = (t.expand(pairs, -1, -1, -1) for t in (q, k, v))
        mask = None if key_mask is None else key_mask[:, None, None, :].expand(pairs, -1, -1, -1)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [P, H, N, D / H]
        attended = attended.transpose(1, 2).reshape(pairs, q.shape[2], -1)
        # In-place adds and ReLU: on a CPU, allocating and touching fresh [P, N, D] buffers costs as
        # much as the arithmetic of these element-wise steps.
        x = unbiased_post_norm(self._linear(name, "out_proj", attended).add_(residual), layer.norm1)
        hidden = F.relu(self._linear(name, "fc1", x), inplace=True)
        return unbiased_post_norm(self._linear(name, "fc2", hidden).add_(x), layer.norm2)

    def _anchors(self, grid_tokens: torch.Tensor) -> torch.Tensor:
        """[P, N, D] -> [P, A, K], as `ZSEModel.anchors` (the token buffer read as a (D, 14, 14) map)."""
        pairs, _, dim = grid_tokens.shape
        side = self.model.config.grid_size
        down = self.model.downsample(grid_tokens.reshape(pairs, dim, side, side))  # [P, K, 7, 7]
        return down.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def kernel(self, photos: torch.Tensor | PreparedPhotos, photo_kept: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine kernel [P, A, A] float32 of the sketch against photo tokens [P, T', D] (or prepared)."""
        if not isinstance(photos, PreparedPhotos):
            photos = prepare_photos(self.model, photos, photo_kept, self.photo_weights, self.int8)
        if len(photos) == 0:
            anchors = self.model.config.num_anchors
            return photos.tokens.new_empty(0, anchors, anchors, dtype=torch.float32)
        sketch_out = self._layer("sketch_layer", photos, self.sketch_residual, photos.key_mask)
        photo_out = self._layer("photo_layer", photos, photos.tokens[:, 1:], self.sketch_mask)
        # Normalised first, then one batched product; a zero anchor gives 0, as the reference's NaN -> 0.
        sketch_anchors = F.normalize(self._anchors(sketch_out).float(), dim=-1)
        photo_anchors = F.normalize(self._anchors(photo_out).float(), dim=-1)
        return sketch_anchors @ photo_anchors.transpose(-2, -1)

    @torch.no_grad()
    def score(self, photos: torch.Tensor | PreparedPhotos, photo_kept: torch.Tensor | None = None) -> torch.Tensor:
        """Relation scores [P] float32 in (0, 1) of the sketch against photo tokens [P, T', D] (or prepared)."""
        kernel = self.kernel(photos, photo_kept)
        if kernel.shape[0] == 0:
            return kernel.new_empty(0)
        head = self.model.relation_head
        # The head outside autocast: in half precision its sigmoid output moves in steps of 1/256 near
        # 0.5 and ties photos that float32 ranks apart; it is a small share of the cost.
        with torch.autocast(kernel.device.type, enabled=False):
            return head(kernel.to(head.layers[0].weight.dtype)).float()
