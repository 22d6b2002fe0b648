"""Influence: removing one kernel pair at a time, in one batched pass, against brute force."""

from __future__ import annotations

import pytest
import torch

from models.explain import influence, pair_removal_scores
from tests.support.images import as_input


@pytest.fixture(scope="module")
def kernel(tiny, pixels, sketch_pixels):
    with torch.inference_mode():
        sketch = tiny.encode(as_input(sketch_pixels), modality="sketch").tokens
        photo = tiny.encode(as_input(pixels[0])).tokens
        return tiny.kernel(sketch, photo)[0]


def test_batched_removal_equals_brute_force_one_pair_at_a_time(tiny, kernel):
    anchors = kernel.shape[0]
    brute = torch.empty(anchors, anchors)
    with torch.inference_mode():
        for i in range(anchors):
            for j in range(anchors):
                removed = kernel.clone()
                removed[i, j] = 0.0
                brute[i, j] = tiny.relation_head(removed[None])[0]
        score = float(tiny.relation_head(kernel[None])[0])
    batched = pair_removal_scores(tiny.relation_head, kernel)
    torch.testing.assert_close(batched, brute, atol=1e-6, rtol=0)

    result = influence(tiny.relation_head, kernel, top=5)
    assert result.score == pytest.approx(score, abs=1e-7)
    drop = (score - brute) / score * 100
    torch.testing.assert_close(result.drop_percent, drop, atol=1e-3, rtol=0)
    expected = torch.sort(-drop.flatten(), stable=True).indices[:5]
    assert (result.sketch_anchors * anchors + result.photo_anchors).tolist() == expected.tolist()
    # The first pair's removal lowers the score most of all pairs.
    first = (int(result.sketch_anchors[0]), int(result.photo_anchors[0]))
    assert brute[first] == brute.min()


def test_one_relation_call_per_chunk(tiny, kernel):
    calls = []
    handle = tiny.relation_head.register_forward_hook(lambda _m, inputs, _o: calls.append(inputs[0].shape[0]))
    try:
        default = pair_removal_scores(tiny.relation_head, kernel)
        assert calls == [512, 512, 512, 512, 353]
        calls.clear()
        small = pair_removal_scores(tiny.relation_head, kernel, chunk=1000)
        assert calls == [1000, 1000, 401]
    finally:
        handle.remove()
    torch.testing.assert_close(small, default, atol=1e-6, rtol=0)
