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
