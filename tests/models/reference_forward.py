"""An independent, functional forward pass of ZSE-SBIR over reference-named weights.

Written from the architecture facts (zse-sbir-facts.md), with plain tensor operations and the
reference key names, to check that `models.ZSEModel` computes the same function. It shares no code
with the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def self_attention(sd: dict[str, torch.Tensor], images: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, 3, 224, 224] -> [B, 197, D] after the final norm."""

    def w(name: str) -> torch.Tensor:
        return sd["sa.model." + name]

    patch = F.conv2d(images, w("embedding.weight"), w("embedding.bias"), stride=16)
    stack = images
    for index, (stride, padding) in zip((0, 2, 4, 6), ((2, 3), (2, 1), (2, 1), (2, 1)), strict=True):
        stack = F.conv2d(stack, w(f"scale.seq.{index}.weight"), None, stride, padding)
        if index != 6:
            stack = F.relu(stack)
    x = ((patch + stack) / 2).flatten(2).transpose(1, 2)
    batch, _, dim = x.shape
    x = torch.cat([w("cls").expand(batch, -1, -1), x], dim=1) + w("pos_embedding")
    depth = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith("sa.model.transformer.layers."))
    head_dim = dim // heads
    for layer in range(depth):
        pre = f"transformer.layers.{layer}.0."
        h = F.layer_norm(x, (dim,), w(pre + "layer_norm_input.weight"), w(pre + "layer_norm_input.bias"), 1e-5)
        q, k, v = F.linear(h, w(pre + "attention.to_qkv.weight"), w(pre + "attention.to_qkv.bias")).chunk(3, -1)
        q, k, v = (t.reshape(batch, -1, heads, head_dim).permute(0, 2, 1, 3) for t in (q, k, v))
        weights = (torch.einsum("bhid,bhjd->bhij", q, k) * head_dim**-0.5).softmax(-1)
        attended = torch.einsum("bhij,bhjd->bhid", weights, v).permute(0, 2, 1, 3).reshape(batch, -1, dim)
        x = x + F.linear(attended, w(pre + "attention.to_out.0.weight"), w(pre + "attention.to_out.0.bias"))
        h = F.layer_norm(x, (dim,), w(pre + "layer_norm_out.weight"), w(pre + "layer_norm_out.bias"), 1e-5)
        hidden = F.gelu(F.linear(h, w(pre + "mlp.net.0.weight"), w(pre + "mlp.net.0.bias")))
        x = x + F.linear(hidden, w(pre + "mlp.net.3.weight"), w(pre + "mlp.net.3.bias"))
    return F.layer_norm(
        x, (dim,), w("transformer.encoder_norm.weight"), w("transformer.encoder_norm.bias"), 1e-5
    )


def _unbiased_norm(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    std = ((x - mean).pow(2).sum(-1, keepdim=True) / (x.shape[-1] - 1)).sqrt()
    return a * (x - mean) / (std + 1e-6) + b


def _cross_layer(sd, prefix, query, key, value, heads=8):
    def w(name: str) -> torch.Tensor:
        return sd[prefix + name]

    batch, _, dim = query.shape
    head_dim = dim // heads
    projected = [
        F.linear(t, w(f"self_attn.linears.{i}.weight"), w(f"self_attn.linears.{i}.bias"))
        .reshape(batch, -1, heads, head_dim)
        .transpose(1, 2)
        for i, t in enumerate((query, key, value))
    ]
    q, k, v = projected
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(batch, -1, dim)
    attended = F.linear(attended, w("self_attn.linears.3.weight"), w("self_attn.linears.3.bias"))
    x = _unbiased_norm(value + attended, w("sublayer.0.norm.a"), w("sublayer.0.norm.b"))
    ffn = F.linear(F.relu(F.linear(x, w("feed_forward.w_1.weight"), w("feed_forward.w_1.bias"))),
                   w("feed_forward.w_2.weight"), w("feed_forward.w_2.bias"))
    return _unbiased_norm(x + ffn, w("sublayer.1.norm.a"), w("sublayer.1.norm.b"))


def relation(sd, sketch_sa: torch.Tensor, photo_sa: torch.Tensor, heads: int = 8):
    """Aligned pairs: sketch_sa, photo_sa [P, 197, D] (sketch already repeated per pair).
    Returns (kernel [P, 49, 49], scores [P])."""
    sketch_ca = _cross_layer(sd, "ca.encoder.layer1.0.", sketch_sa, photo_sa, sketch_sa, heads)
    photo_ca = _cross_layer(sd, "ca.encoder.layer2.0.", photo_sa, sketch_sa, photo_sa, heads)
    both = torch.cat([sketch_ca, photo_ca])[:, 1:]
    count, tokens, dim = both.shape
    side = int(math.isqrt(tokens))
    down = F.conv2d(both.reshape(count, dim, side, side), sd["conv2d.weight"], sd["conv2d.bias"], stride=2)
    anchors = down.reshape(count, down.shape[1], -1).transpose(1, 2)
    s, p = anchors[: count // 2], anchors[count // 2 :]
    kernel = torch.einsum("bik,bjk->bij", s, p) / (s.norm(dim=-1)[:, :, None] * p.norm(dim=-1)[:, None, :])
    kernel = torch.where(torch.isnan(kernel), torch.zeros_like(kernel), kernel)
    h = F.relu(F.linear(kernel.reshape(count // 2, -1), sd["rn.rn.0.weight"], sd["rn.rn.0.bias"]))
    h = F.relu(F.linear(h, sd["rn.rn.3.weight"], sd["rn.rn.3.bias"]))
    scores = torch.sigmoid(F.linear(h, sd["rn.rn.6.weight"], sd["rn.rn.6.bias"])).squeeze(-1)
    return kernel, scores
