"""The rq token codec: its size rule, exact round trips where the data allow it, one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer import token_codec
from indexer.errors import IndexerError


@pytest.mark.parametrize(("dim", "budget"), [(768, 32), (96, 32), (96, 16), (10, 2)])
def test_a_token_takes_exactly_its_budget_one_centroid_byte_and_one_byte_per_residual_stage(dim, budget) -> None:
    entry = token_codec.describe(budget)
    assert token_codec.sub_quantizers(budget) == budget - 1
    assert entry["code_size"] == budget
    assert entry["factory"] == f"IVF256,RQ{budget - 1}x8"


def test_vectors_that_are_centroids_and_codewords_decode_exactly(tmp_path: Path) -> None:
    # Four distinct vectors, many copies each: k-means puts centroids on them, the residuals are 0,
    # and every PQ codebook holds 0 exactly, so decode(encode(x)) == x.
    rng = np.random.default_rng(0)
    distinct = rng.standard_normal((4, 32)).astype(np.float32)
    data = distinct[rng.integers(0, 4, 1200)]
    codec = token_codec.train(data, 9)  # 1 centroid byte + 8 sub-quantizers of 4 dims
    tokens = data[:20].reshape(2, 10, 32)
    codes = token_codec.encode(codec, tokens)
    assert codes.shape == (2, 10, 9) and codes.dtype == np.uint8
    np.testing.assert_allclose(token_codec.decode(codec, codes), tokens, atol=1e-4)
    token_codec.save(codec, tmp_path)
    np.testing.assert_array_equal(token_codec.decode(token_codec.load(tmp_path), codes),
                                  token_codec.decode(codec, codes))


def test_too_few_vectors_and_too_small_budgets_are_indexer_errors() -> None:
    with pytest.raises(IndexerError, match="at least 256 token vectors"):
        token_codec.train(np.zeros((100, 8), np.float32), 8)
    with pytest.raises(IndexerError, match="at least 2"):
        token_codec.describe(1)


def test_a_transformed_codec_codes_the_transformed_tokens_and_decodes_back(tmp_path: Path) -> None:
    # Same exact-decode data as above, coded in the space y = A x of a random positive definite A;
    # the decoder maps the codes back to x.
    import faiss

    rng = np.random.default_rng(1)
    distinct = rng.standard_normal((4, 32)).astype(np.float32)
    data = distinct[rng.integers(0, 4, 1200)]
    root = rng.standard_normal((32, 32))
    transform = root @ root.T / 32 + np.eye(32)
    codec = token_codec.train(data, 9, transform=transform)
    tokens = data[:20].reshape(2, 10, 32)
    codes = token_codec.encode(codec, tokens)
    # The codes code A x: the encoder's own decoding of them is A x.
    coded = np.asarray(codec.encoder.sa_decode(np.ascontiguousarray(codes.reshape(20, -1))))
    np.testing.assert_allclose(coded, data[:20] @ transform.T, atol=1e-3)
    np.testing.assert_allclose(token_codec.decode(codec, codes), tokens, atol=1e-3)
    token_codec.save(codec, tmp_path)
    assert (tmp_path / token_codec.METRIC_FILE).is_file()
    loaded = token_codec.load(tmp_path)
    np.testing.assert_array_equal(token_codec.decode(loaded, codes), token_codec.decode(codec, codes))
    # The stored codec is the encoder: its decoding, mapped back by A^-1, is the decoder's output.
    raw = faiss.read_index(str(tmp_path / token_codec.CODEC_FILE)).sa_decode(np.ascontiguousarray(codes.reshape(20, -1)))
    np.testing.assert_allclose(raw @ np.linalg.inv(transform).T, token_codec.decode(codec, codes).reshape(20, 32),
                               atol=1e-4)


def test_a_codec_saved_without_a_metric_loads_as_the_plain_codec(tmp_path: Path) -> None:
    data = np.random.default_rng(2).standard_normal((1200, 16)).astype(np.float32)
    codec = token_codec.train(data, 4)
    token_codec.save(codec, tmp_path)
    assert not (tmp_path / token_codec.METRIC_FILE).exists()
    loaded = token_codec.load(tmp_path)
    assert loaded.transform is None
    codes = token_codec.encode(loaded, data[:8].reshape(1, 8, 16))
    np.testing.assert_array_equal(token_codec.decode(loaded, codes), token_codec.decode(codec, codes))


def test_a_transform_of_the_wrong_width_is_a_codec_error() -> None:
    data = np.random.default_rng(3).standard_normal((1200, 16)).astype(np.float32)
    with pytest.raises(IndexerError, match="shape"):
        token_codec.train(data, 4, transform=np.eye(8))
