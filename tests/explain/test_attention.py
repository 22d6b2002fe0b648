"""Attention maps: [Ret] attention per head of the last block on the grid, and selection masks."""

from __future__ import annotations

import math

import torch

from models.explain import attention_maps
from tests.support.images import as_input


def direct_ret_attention(model, images, modality):
    """[B, H, T'] softmax(q_ret . k / sqrt(d)) of the last block, from its normed input (a hook)."""
    captured = {}
    block = model.encoder.blocks[-1]
    handle = block.norm1.register_forward_hook(lambda _m, _i, out: captured.setdefault("x", out))
    try:
        with torch.inference_mode():
            model.encode(images, modality=modality)
    finally:
        handle.remove()
    x = captured["x"]
    batch, count, dim = x.shape
    heads = block.attn.num_heads
    with torch.inference_mode():
        q, k, _ = block.attn.qkv(x).reshape(batch, count, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        logits = torch.einsum("bhd,bhtd->bht", q[:, :, 0], k) / math.sqrt(dim // heads)
        return logits.softmax(dim=-1)


def test_maps_are_distributions_equal_to_the_direct_computation(tiny, pixels):
    images = torch.cat([as_input(p) for p in pixels])
    maps = attention_maps(tiny, images, "photo")
    assert maps.heads.shape == (2, 3, 14, 14) and maps.ret_self.shape == (2, 3)
    assert (maps.heads >= 0).all() and (maps.ret_self >= 0).all()
    torch.testing.assert_close(maps.heads.sum(dim=(2, 3)) + maps.ret_self, torch.ones(2, 3), atol=1e-5, rtol=0)
    direct = direct_ret_attention(tiny, images, "photo")
    torch.testing.assert_close(maps.ret_self, direct[:, :, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(maps.heads.flatten(2), direct[:, :, 1:], atol=1e-6, rtol=0)
    assert maps.selections.shape == (2, 0, 14, 14) and maps.layers == ()


def test_with_token_selection_maps_sit_on_the_kept_positions(tiny_selecting, pixels):
    images = torch.cat([as_input(p) for p in pixels])
    maps = attention_maps(tiny_selecting, images, "sketch")
    # Selection at blocks 1, 2, 3 of 4, sketch keep rate 0.7: ceil(0.7 * n) each time.
    assert maps.layers == (1, 2, 3)
    counts = [196]
    for _ in maps.layers:
        counts.append(math.ceil(0.7 * counts[-1]))
    assert maps.selections.flatten(2).sum(-1).tolist() == [counts[1:]] * 2
    # Each selection keeps a subset of the previous one.
    for layer in range(1, 3):
        assert not (maps.selections[:, layer] & ~maps.selections[:, layer - 1]).any()
    # The last block selects after its attention, so its [Ret] row covers the tokens kept by block 2.
    direct = direct_ret_attention(tiny_selecting, images, "sketch")
    assert direct.shape[-1] == 1 + counts[2]
    entering = maps.selections[:, 1].flatten(1)
    for image in range(2):
        torch.testing.assert_close(maps.heads[image].flatten(1)[:, entering[image]], direct[image, :, 1:],
                                   atol=1e-6, rtol=0)
        assert (maps.heads[image].flatten(1)[:, ~entering[image]] == 0).all()
    torch.testing.assert_close(maps.heads.sum(dim=(2, 3)) + maps.ret_self, torch.ones(2, 3), atol=1e-5, rtol=0)
