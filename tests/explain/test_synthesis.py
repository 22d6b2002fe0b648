"""Synthesis by patch replacement: patch geometry, best photo patches, means of neighbours."""

from __future__ import annotations

import numpy as np
import torch

from models.explain import (
    image_patches,
    patch_vectors,
    patches_to_image,
    synthesize_from_neighbours,
    synthesize_from_photos,
)
from tests.support.images import as_input


def tokens_of(model, pixels, modality="photo"):
    with torch.inference_mode():
        encoded = model.encode(as_input(pixels), modality=modality)
    return encoded.tokens, encoded.kept


def test_patches_round_trip_in_row_major_cells():
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    patches = image_patches(image, 14)
    assert patches.shape == (196, 16, 16, 3)
    np.testing.assert_array_equal(patches[14 * 3 + 5], image[48:64, 80:96])
    np.testing.assert_array_equal(patches_to_image(patches), image)


def test_an_image_synthesised_from_itself_is_itself(tiny, pixels, sketch_pixels):
    tokens, _ = tokens_of(tiny, pixels[0])
    # The "sketch" is the photo itself; its own pixels must come back whatever the base pixels are.
    result = synthesize_from_photos(tokens, tokens, pixels[0][None], sketch_pixels)
    np.testing.assert_array_equal(result.image, pixels[0])
    assert (result.source == 0).all() and (result.source_cell == np.arange(196)).all()
    np.testing.assert_allclose(result.score, 1.0, atol=1e-5)
    # With a second photo to choose from, each patch still finds itself (cosine 1 is the maximum).
    other, _ = tokens_of(tiny, pixels[1])
    both = synthesize_from_photos(tokens, torch.cat([other, tokens]), np.stack([pixels[1], pixels[0]]),
                                  sketch_pixels)
    np.testing.assert_array_equal(both.image, pixels[0])
    assert (both.source == 1).all()


def test_each_sketch_patch_takes_its_best_photo_patch(tiny, pixels, sketch_pixels):
    sketch, _ = tokens_of(tiny, sketch_pixels, "sketch")
    photos = torch.cat([tokens_of(tiny, p)[0] for p in pixels])
    stack = np.stack(pixels)
    result = synthesize_from_photos(sketch, photos, stack, sketch_pixels)
    sketch_vectors, _ = patch_vectors(sketch, None, 196)
    photo_vectors, _ = patch_vectors(photos, None, 196)
    similarity = sketch_vectors[0] @ photo_vectors.reshape(-1, photo_vectors.shape[-1]).T
    best = similarity.argmax(dim=1).numpy()
    np.testing.assert_array_equal(result.source * 196 + result.source_cell, best)
    expected = image_patches(stack, 14).reshape(-1, 16, 16, 3)[best]
    np.testing.assert_array_equal(image_patches(result.image, 14), expected)


def test_dropped_sketch_tokens_keep_their_pixels(tiny_selecting, pixels, sketch_pixels):
    sketch, sketch_kept = tokens_of(tiny_selecting, sketch_pixels, "sketch")
    photo, photo_kept = tokens_of(tiny_selecting, pixels[0])
    result = synthesize_from_photos(sketch, photo, pixels[0][None], sketch_pixels, sketch_kept, photo_kept)
    kept = np.zeros(196, dtype=bool)
    kept[sketch_kept[0].numpy()] = True
    assert (result.source[~kept] == -1).all() and (result.source[kept] == 0).all()
    assert set(result.source_cell[kept].tolist()) <= set(photo_kept[0].tolist())
    np.testing.assert_array_equal(image_patches(result.image, 14)[~kept], image_patches(sketch_pixels, 14)[~kept])


def test_neighbour_mean_ignores_padding_and_keeps_unmatched_sketch_patches():
    rng = np.random.default_rng(1)
    neighbours = rng.integers(0, 256, (196, 3, 16, 16, 3), dtype=np.uint8)
    valid = np.ones((196, 3), dtype=bool)
    valid[5, 2] = False  # padding: only two neighbours found
    valid[7] = False  # none found
    sketch = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    image = synthesize_from_neighbours(neighbours, valid, sketch)
    patches = image_patches(image, 14)
    expected = np.rint(neighbours.astype(np.float64).mean(axis=1)).astype(np.uint8)
    np.testing.assert_array_equal(patches[0], expected[0])
    np.testing.assert_array_equal(patches[5], np.rint(neighbours[5, :2].astype(np.float64).mean(0)).astype(np.uint8))
    np.testing.assert_array_equal(patches[7], image_patches(sketch, 14)[7])
    # k = 1: the neighbour itself, exactly.
    single = synthesize_from_neighbours(neighbours[:, :1], np.ones((196, 1), dtype=bool), sketch)
    np.testing.assert_array_equal(image_patches(single, 14), neighbours[:, 0])
