"""ZSE-SBIR: ViT with a learnable tokenizer and a [Ret] token, cross-attention, kernel relation network.

Lin et al., "Zero-Shot Everything Sketch-Based Image Retrieval, and in Explainable Style", CVPR 2023.
Shapes below use the ViT-B/16 preset: B images, N = 196 patch tokens on a 14x14 grid, D = 768,
A = 49 anchors on a 7x7 grid after the 2x2 downsampling conv, K = 512 kernel channels.

The self-attention blocks are timm's `Block` (pre-norm, qkv as one Linear with bias, GELU MLP), built
with the reference's LayerNorm epsilon. Their forward is driven here rather than through `Block.forward`
because token selection must happen between the attention and the MLP, and the [Ret] token's attention
row is needed for selection and for explanations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from models.config import ZSEConfig
from models.cross_attention import CrossAttention
from models.prescore import PreScorer
from models.relation import RelationNetwork, cosine_kernel
from models.types import Encoded


class Tokenizer(nn.Module):
    """Learnable tokenizer: a 16x16 patch conv averaged with a 4-layer strided conv stack.

    [B, 3, 224, 224] -> [B, N, D]; both branches reduce the image by 16 in each direction.
    """

    def __init__(self, config: ZSEConfig) -> None:
        super().__init__()
        if config.patch_size != 16:
            raise ValueError("the tokenizer's conv stack reduces by 16: patch_size must be 16")
        dim = config.embed_dim
        c1, c2, c3 = config.stack_channels
        self.patch = nn.Conv2d(3, dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.stack = nn.Sequential(
            nn.Conv2d(3, c1, 7, 2, 3, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, 2, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c3, 3, 2, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, dim, 3, 2, 1, bias=False),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grid = (self.patch(images) + self.stack(images)) / 2  # [B, D, 14, 14]
        return grid.flatten(2).transpose(1, 2)


@dataclass
class SelfAttentionOutput:
    """tokens [B, 1+n, D] after the final norm; kept [B, n] grid positions (None if all kept);
    ret_attention [B, H, 1+n] of the last block (when asked); selections: kept positions after
    each selection layer, in order (when asked)."""

    tokens: torch.Tensor
    kept: torch.Tensor | None
    ret_attention: torch.Tensor | None = None
    selections: list[torch.Tensor] | None = None


def _block_attention(
    block: Any, x: torch.Tensor, want_ret_attention: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multi-head self-attention of a timm block on its normed input.

    x: [B, T, D] (already through norm1). Returns the projected output [B, T, D] and, if asked,
    the [Ret] row of the attention matrix per head [B, H, T].
    """
    attn: Any = block.attn  # timm's Attention; typed loosely by torch's Module.__getattr__
    batch, count, dim = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(batch, count, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each [B, H, T, Dh]
    q, k = attn.q_norm(q), attn.k_norm(k)
    dropout = attn.attn_drop.p if attn.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    out = out.transpose(1, 2).reshape(batch, count, dim)
    out = attn.proj_drop(attn.proj(attn.norm(out)))
    ret_attention = None
    if want_ret_attention:
        # Only the [Ret] query row is needed: one row of softmax(q k^T * scale) per head.
        ret_attention = torch.softmax((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1), dim=-1)
        ret_attention = ret_attention.squeeze(2)
    return out, ret_attention


def select_tokens(
    x: torch.Tensor, ret_attention: torch.Tensor, keep_rate: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """EViT-style token selection.

    x: [B, 1+n, D]; ret_attention: [B, H, 1+n]. Keeps [Ret] and the ceil(keep_rate * n) tokens
    with the highest head-mean attention from [Ret], in their original order.
    Returns (x [B, 1+m, D], index [B, m] into the n non-[Ret] tokens).
    """
    n = x.shape[1] - 1
    keep = math.ceil(keep_rate * n)
    scores = ret_attention[:, :, 1:].mean(dim=1)  # [B, n]
    index = scores.topk(keep, dim=1).indices.sort(dim=1).values
    gathered = x[:, 1:].gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return torch.cat([x[:, :1], gathered], dim=1), index


class SelfAttentionEncoder(nn.Module):
    """Tokenizer, [Ret] token, position embedding and pre-norm ViT blocks with optional selection."""

    def __init__(self, config: ZSEConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.tokenizer = Tokenizer(config)
        self.ret_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.num_tokens, dim))
        self.pos_drop = nn.Dropout(config.dropout)
        norm_layer = partial(nn.LayerNorm, eps=config.norm_eps)
        self.blocks = nn.ModuleList(
            Block(
                dim=dim,
                num_heads=config.num_heads,
                mlp_ratio=config.mlp_dim / dim,
                qkv_bias=True,
                proj_drop=config.dropout,
                attn_drop=0.0,
                norm_layer=norm_layer,  # type: ignore[arg-type]
                act_layer=nn.GELU,
            )
            for _ in range(config.depth)
        )
        self.norm = norm_layer(dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.ret_token, std=0.02)

    def forward(
        self, images: torch.Tensor, keep_rate: float = 1.0, trace: bool = False
    ) -> SelfAttentionOutput:
        """images [B, 3, H, W] -> SelfAttentionOutput (see its docstring)."""
        tokens = self.tokenizer(images)
        batch = tokens.shape[0]
        x = torch.cat([self.ret_token.expand(batch, -1, -1), tokens], dim=1) + self.pos_embed
        x = self.pos_drop(x)
        kept: torch.Tensor | None = None
        selections: list[torch.Tensor] = []
        ret_attention = None
        last = len(self.blocks) - 1
        block: Any
        for i, block in enumerate(self.blocks):
            selecting = keep_rate < 1.0 and i in self.config.selection_layers
            want = selecting or (trace and i == last)
            out, ret_attention = _block_attention(block, block.norm1(x), want)
            x = x + block.drop_path1(block.ls1(out))
            if selecting:
                assert ret_attention is not None
                x, index = select_tokens(x, ret_attention, keep_rate)
                if kept is None:
                    kept = index
                else:
                    kept = kept.gather(1, index)
                selections.append(kept)
            x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
        return SelfAttentionOutput(
            tokens=self.norm(x),
            kept=kept,
            ret_attention=ret_attention if trace else None,
            selections=selections if trace else None,
        )


class ZSEModel(nn.Module):
    """The ZSE-SBIR model: `encode` for the [Ret] embedding and tokens, `relation` / `kernel` for pairs."""

    family = "zse"
    has_relation = True

    def __init__(self, config: ZSEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = SelfAttentionEncoder(config)
        self.cross = CrossAttention(config)
        self.downsample = nn.Conv2d(config.embed_dim, config.kernel_dim, kernel_size=2, stride=2)
        self.relation_head = RelationNetwork(config.num_anchors, config.relation_hidden, config.dropout)
        self.prescorer = (PreScorer(config.num_anchors, config.relation_hidden, config.dropout)
                          if config.prescorer else None)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def token_shape(self) -> tuple[int, int]:
        """(T, D) of the tokens `relation` consumes, with selection off."""
        return 1 + self.config.num_tokens, self.config.embed_dim

    def keep_rate(self, modality: str) -> float:
        if modality == "sketch":
            return self.config.keep_rate_sketch
        if modality == "photo":
            return self.config.keep_rate_photo
        raise ValueError(f"modality must be 'sketch' or 'photo', not {modality!r}")

    def encode(self, images: torch.Tensor, modality: str = "photo", trace: bool = False) -> Encoded:
        """images [B, 3, 224, 224] -> Encoded(ret [B, D] L2-normalised [Ret], tokens [B, 1+n, D]).

        With trace=True, also the last block's [Ret] attention per head and the selection masks.
        """
        out = self.encoder(images, keep_rate=self.keep_rate(modality), trace=trace)
        return Encoded(
            ret=F.normalize(out.tokens[:, 0], dim=-1),
            tokens=out.tokens,
            kept=out.kept,
            ret_attention=out.ret_attention,
            selections=out.selections,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images).ret

    def relation_scorer(self, sketch_tokens: torch.Tensor, sketch_kept: torch.Tensor | None = None,
                        int8: Any = None) -> Any:
        """The fast exact scorer of one sketch (tokens [1, T', D]) against many photos: the sketch side
        computed once (models.fast_relation.RelationScorer; same scores as ``relation``). With
        ``int8`` (``models.int8.int8_relation(self)``) its large products are int8: not exact."""
        from models.fast_relation import RelationScorer

        return RelationScorer(self, sketch_tokens, sketch_kept, int8)

    def _full_grid(
        self, tokens: torch.Tensor, kept: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Put selected tokens back on the full 1+N sequence (zeros elsewhere) with a key mask.

        The downsampling conv needs the whole grid, and the reference cross-attention pairs token
        slots of the two modalities, so both sides are restored to N slots; the mask [B, 1+N]
        keeps dropped slots out of the attention keys.
        """
        if kept is None:
            return tokens, None
        batch, _, dim = tokens.shape
        full = tokens.new_zeros(batch, 1 + self.config.num_tokens, dim)
        full[:, 0] = tokens[:, 0]
        full.scatter_(1, (kept + 1).unsqueeze(-1).expand(-1, -1, dim), tokens[:, 1:])
        mask = torch.zeros(batch, 1 + self.config.num_tokens, dtype=torch.bool, device=tokens.device)
        mask[:, 0] = True
        mask.scatter_(1, kept + 1, True)
        return full, mask

    def cross_tokens(
        self,
        sketch_tokens: torch.Tensor,
        photo_tokens: torch.Tensor,
        sketch_kept: torch.Tensor | None = None,
        photo_kept: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention between aligned pairs.

        sketch_tokens [1 or P, T, D] (one sketch is broadcast, not copied), photo_tokens [P, T, D].
        Returns (sketch_out, photo_out), each [P, T, D].
        """
        sketch_tokens, sketch_mask = self._full_grid(sketch_tokens, sketch_kept)
        photo_tokens, photo_mask = self._full_grid(photo_tokens, photo_kept)
        return self.cross(sketch_tokens, photo_tokens, sketch_mask, photo_mask)

    def anchors(self, cross_out: torch.Tensor) -> torch.Tensor:
        """[P, 1+N, D] cross-attention output -> [P, A, K] anchor features.

        The reference reads the (N, D) token buffer as a (D, 14, 14) map with a plain reshape, not a
        transpose; checkpoints trained that way depend on it, so it is kept.
        """
        pairs = cross_out.shape[0]
        grid = self.config.grid_size
        feature_map = cross_out[:, 1:].contiguous().reshape(pairs, self.config.embed_dim, grid, grid)
        down = self.downsample(feature_map)  # [P, K, 7, 7]
        return down.flatten(2).transpose(1, 2)

    def kernel(
        self,
        sketch_tokens: torch.Tensor,
        photo_tokens: torch.Tensor,
        sketch_kept: torch.Tensor | None = None,
        photo_kept: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Cosine kernel M[p, i, j] = cos(sketch anchor i, photo anchor j) of each pair: [P, A, A]."""
        sketch_out, photo_out = self.cross_tokens(sketch_tokens, photo_tokens, sketch_kept, photo_kept)
        return cosine_kernel(self.anchors(sketch_out), self.anchors(photo_out))

    def relation(
        self,
        sketch_tokens: torch.Tensor,
        photo_tokens: torch.Tensor,
        sketch_kept: torch.Tensor | None = None,
        photo_kept: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Relation scores in (0, 1) for P aligned sketch-photo pairs: [P]."""
        return self.relation_head(self.kernel(sketch_tokens, photo_tokens, sketch_kept, photo_kept))

    def training_forward(
        self, sketches: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
    ) -> TripletOutput:
        """One reference-style triplet step: SA over [S, I+, I-], CA for pairs (S, I+) and (S, I-).

        sketches, positives, negatives: [B, 3, H, W]. Returns the CA [Ret] features of S (paired with
        I+), I+ and I- ([B, D] each, not normalised, as the reference's triplet loss takes them), the
        SA [Ret] features of S, I+ and I- ([B, D] each, after the final norm, not normalised: what
        "Ret" retrieval and the ANN shortlist compare once normalised) and the relation scores of
        (S, I+) and (S, I-) ([B] each).
        """
        batch = sketches.shape[0]
        sketch_sa = self.encoder(sketches, keep_rate=self.config.keep_rate_sketch)
        photo_sa = self.encoder(torch.cat([positives, negatives]), keep_rate=self.config.keep_rate_photo)
        sketch_tokens = sketch_sa.tokens.repeat(2, 1, 1)
        sketch_kept = None if sketch_sa.kept is None else sketch_sa.kept.repeat(2, 1)
        sketch_out, photo_out = self.cross_tokens(sketch_tokens, photo_sa.tokens, sketch_kept, photo_sa.kept)
        scores = self.relation_head(cosine_kernel(self.anchors(sketch_out), self.anchors(photo_out)))
        return TripletOutput(
            sketch_ret=sketch_out[:batch, 0],
            positive_ret=photo_out[:batch, 0],
            negative_ret=photo_out[batch:, 0],
            positive_scores=scores[:batch],
            negative_scores=scores[batch:],
            sketch_sa_ret=sketch_sa.tokens[:, 0],
            positive_sa_ret=photo_sa.tokens[:batch, 0],
            negative_sa_ret=photo_sa.tokens[batch:, 0],
        )


@dataclass
class TripletOutput:
    sketch_ret: torch.Tensor
    positive_ret: torch.Tensor
    negative_ret: torch.Tensor
    positive_scores: torch.Tensor
    negative_scores: torch.Tensor
    sketch_sa_ret: torch.Tensor
    positive_sa_ret: torch.Tensor
    negative_sa_ret: torch.Tensor
