"""Cross-attention between sketch and photo tokens (one post-norm layer per modality).

Two forms (see zse-sbir-facts.md):
- "reference" (default; official checkpoints were trained with it): each modality's layer takes
  queries from itself, keys from the other modality, values and residual from itself:
  sketch_out = Layer_S(q=S, k=I, v=S), photo_out = Layer_I(q=I, k=S, v=I). It needs the same
  token count on both sides.
- "paper": the swapped tuples written in the paper, (Q_S, K_I, V_I) and (Q_I, K_S, V_S), with the
  residual from the query's own modality.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ZSEConfig


class UnbiasedLayerNorm(nn.Module):
    """a * (x - mean) / (std + eps) + b with the unbiased std, as the reference's cross-attention.

    Not nn.LayerNorm: the epsilon is added to the std, not the variance, and the std is unbiased.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        std = x.std(-1, keepdim=True)
        return self.weight * (x - mean) / (std + self.eps) + self.bias


class CrossAttentionLayer(nn.Module):
    """x = Norm(residual + Drop(MHA(q, k, v))); x = Norm(x + Drop(FFN(x))), FFN = Linear-ReLU-Linear."""

    def __init__(self, dim: int, heads: int, ff_dim: int, dropout: float, norm_eps: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"cross-attention: dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, ff_dim)
        self.fc2 = nn.Linear(ff_dim, dim)
        self.norm1 = UnbiasedLayerNorm(dim, norm_eps)
        self.norm2 = UnbiasedLayerNorm(dim, norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, count, dim = x.shape
        return x.reshape(batch, count, self.heads, dim // self.heads).transpose(1, 2)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        residual: torch.Tensor,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query [Bq, Tq, D], key [Bk, Tk, D], value [Bv, Tk, D], residual [Br, Tq, D]; batch sizes
        are 1 or P and broadcast (projections of a single sketch are computed once). key_mask
        [Bk, Tk] bool, True = may be attended. Returns [P, Tq, D]."""
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(key)), self._split(self.v_proj(value))
        batch = max(q.shape[0], k.shape[0], v.shape[0])
        # expand() makes stride-0 views: the single sketch is not copied per pair.
        q, k, v = (t.expand(batch, -1, -1, -1) for t in (q, k, v))
        mask = None if key_mask is None else key_mask[:, None, None, :].expand(batch, -1, -1, -1)
        dropout = self.attn_dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        attended = attended.transpose(1, 2).reshape(batch, attended.shape[2], -1)
        x = self.norm1(residual + self.dropout(self.out_proj(attended)))
        ffn = self.fc2(self.dropout(F.relu(self.fc1(x))))
        return self.norm2(x + self.dropout(ffn))


class CrossAttention(nn.Module):
    """The sketch-side and photo-side cross-attention layers."""

    def __init__(self, config: ZSEConfig) -> None:
        super().__init__()
        self.form = config.cross_form
        if self.form not in ("reference", "paper"):
            raise ValueError(f"cross_form must be 'reference' or 'paper', not {self.form!r}")

        def layer() -> CrossAttentionLayer:
            return CrossAttentionLayer(
                config.embed_dim, config.cross_heads, config.cross_ff_dim, config.dropout, config.cross_norm_eps
            )

        self.sketch_layer = layer()
        self.photo_layer = layer()

    def forward(
        self,
        sketch_tokens: torch.Tensor,
        photo_tokens: torch.Tensor,
        sketch_mask: torch.Tensor | None = None,
        photo_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """sketch_tokens [1|P, T, D], photo_tokens [P, T, D] -> (sketch_out, photo_out), each [P, T, D]."""
        if self.form == "reference":
            sketch_out = self.sketch_layer(sketch_tokens, photo_tokens, sketch_tokens, sketch_tokens, photo_mask)
            photo_out = self.photo_layer(photo_tokens, sketch_tokens, photo_tokens, photo_tokens, sketch_mask)
        else:
            sketch_out = self.sketch_layer(sketch_tokens, photo_tokens, photo_tokens, sketch_tokens, photo_mask)
            photo_out = self.photo_layer(photo_tokens, sketch_tokens, sketch_tokens, photo_tokens, sketch_mask)
        pairs = photo_out.shape[0]
        return sketch_out.expand(pairs, -1, -1), photo_out
