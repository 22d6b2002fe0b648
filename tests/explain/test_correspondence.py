"""Correspondence: token and anchor cosines after cross-attention, and sketch regions."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from models.explain import box_cells, correspondence, patch_vectors
from tests.support.images import as_input


def encode(model, pixels, modality="photo"):
    with torch.inference_mode():
        encoded = model.encode(as_input(pixels), modality=modality)
    return encoded.tokens, encoded.kept


def test_box_cells_are_the_cells_the_box_touches():
    assert box_cells((0, 0, 32, 32), 7).tolist() == [0]
    assert box_cells((0, 0, 33, 10), 7).tolist() == [0, 1]
    assert box_cells((100, 100, 101, 101), 7).tolist() == [3 * 7 + 3]  # inside one cell
    assert box_cells((0, 0, 224, 224), 14).tolist() == list(range(196))
    assert box_cells((16, 32, 48, 48), 14).tolist() == [2 * 14 + 1, 2 * 14 + 2]
    for bad in ((10, 10, 10, 20), (0, 0, 225, 10), (-1, 0, 10, 10), (20, 0, 10, 10)):
        with pytest.raises(ValueError):
            box_cells(bad, 7)


def test_token_level_equals_the_cosine_of_the_cross_attention_tokens(tiny, pixels):
    sketch_tokens, _ = encode(tiny, pixels[0], "sketch")
    photo_tokens, _ = encode(tiny, pixels[1])
    found = correspondence(tiny, sketch_tokens, photo_tokens, level="token")
    with torch.inference_mode():
        sketch_out, photo_out = tiny.cross_tokens(sketch_tokens, photo_tokens)
    direct = F.normalize(sketch_out[0, 1:], dim=-1) @ F.normalize(photo_out[0, 1:], dim=-1).T
    torch.testing.assert_close(found.similarity, direct, atol=1e-5, rtol=0)
    assert found.grid == 14 and len(found.sketch_cells) == 196
    best = direct.argmax(dim=1)
    assert torch.equal(found.photo_cells, best[found.sketch_cells])
    assert (found.scores[:-1] >= found.scores[1:]).all()  # strongest first


def test_anchor_level_is_the_model_kernel_and_a_box_restricts_the_sketch_cells(tiny, pixels):
    sketch_tokens, _ = encode(tiny, pixels[0], "sketch")
    photo_tokens, _ = encode(tiny, pixels[1])
    box = (40, 70, 100, 130)
    found = correspondence(tiny, sketch_tokens, photo_tokens, level="anchor", box=box)
    with torch.inference_mode():
        kernel = tiny.kernel(sketch_tokens, photo_tokens)[0]
    torch.testing.assert_close(found.similarity, kernel, atol=0, rtol=0)
    region = box_cells(box, 7)
    assert torch.equal(found.region, region)
    assert sorted(found.sketch_cells.tolist()) == sorted(region.tolist())
    assert torch.equal(found.photo_cells, kernel[found.sketch_cells].argmax(dim=1))


def test_same_image_matches_itself_where_the_computation_is_symmetric(tiny, pixels):
    """Sketch = photo = the same image. Where must each token match itself?

    - Self-attention tokens (one encoder for both modalities): identical, so cos(i, i) = 1 is the
      row maximum: every token matches itself. Synthesis and the patch index use these.
    - Cross-attention, reference form: the sketch side runs Layer_S(q=S, k=I, v=S) and the photo side
      Layer_I(q=I, k=S, v=I): two layers with their own weights, so the two sides of the same image
      differ and self-matching is NOT guaranteed (on the drawn photo with random weights only part of
      the tokens match themselves). With the two layers tied (equal weights) both sides are the same
      function of the same tokens, and the self-match is exact, at the token and the anchor level.
    """
    tokens, _ = encode(tiny, pixels[0])
    vectors, _ = patch_vectors(tokens, None, 196)
    assert torch.equal((vectors[0] @ vectors[0].T).argmax(dim=1), torch.arange(196))

    tied = copy.deepcopy(tiny)
    tied.cross.photo_layer.load_state_dict(tied.cross.sketch_layer.state_dict())
    with torch.inference_mode():
        sketch_out, photo_out = tied.cross_tokens(tokens, tokens)
    assert torch.equal(sketch_out, photo_out)
    for level, count in (("token", 196), ("anchor", 49)):
        found = correspondence(tied, tokens, tokens, level=level)
        assert torch.equal(found.photo_cells, found.sketch_cells), level
        torch.testing.assert_close(found.similarity.diagonal(), torch.ones(count), atol=1e-5, rtol=0)

    # The untied (real) model: the two sides are different functions of the same tokens.
    with torch.inference_mode():
        sketch_out, photo_out = tiny.cross_tokens(tokens, tokens)
    assert not torch.allclose(sketch_out, photo_out, atol=1e-3)


def test_dropped_tokens_are_never_matched(tiny_selecting, pixels):
    sketch_tokens, sketch_kept = encode(tiny_selecting, pixels[0], "sketch")
    photo_tokens, photo_kept = encode(tiny_selecting, pixels[1])
    assert sketch_kept is not None and photo_kept is not None
    found = correspondence(tiny_selecting, sketch_tokens, photo_tokens, sketch_kept, photo_kept, level="token")
    assert set(found.sketch_cells.tolist()) == set(sketch_kept[0].tolist())
    assert set(found.photo_cells.tolist()) <= set(photo_kept[0].tolist())
    dropped = sorted(set(range(196)) - set(photo_kept[0].tolist()))
    assert (found.similarity[:, dropped] == 0).all()
    anchors = correspondence(tiny_selecting, sketch_tokens, photo_tokens, sketch_kept, photo_kept, level="anchor")
    with torch.inference_mode():
        kernel = tiny_selecting.kernel(sketch_tokens, photo_tokens, sketch_kept, photo_kept)[0]
    torch.testing.assert_close(anchors.similarity, kernel, atol=0, rtol=0)
