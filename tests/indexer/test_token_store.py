"""Token store: int8 quantisation bounds, segments gathered in any order, sizes per photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.token_store import (
    TokenStore,
    bytes_per_photo,
    dequantize_int8,
    empty_layout,
    encode_tokens,
    link_segments,
    quantize_int8,
    write_segment,
)


def test_int8_error_is_at_most_half_a_step_per_token() -> None:
    rng = np.random.default_rng(0)
    tokens = (rng.standard_normal((5, 7, 32)) * rng.uniform(0.01, 50, (5, 7, 1))).astype(np.float32)
    tokens[0, 0] = 0.0  # an all-zero token must survive
    quantized, scales = quantize_int8(tokens)
    assert quantized.dtype == np.int8 and scales.dtype == np.float16 and scales.shape == (5, 7)
    restored = dequantize_int8(quantized, scales)
    step = np.abs(tokens).max(axis=-1, keepdims=True) / 127.0
    assert np.all(np.abs(restored - tokens) <= 0.5 * step * 1.002 + 1e-7)
    assert np.all(restored[0, 0] == 0.0)


def test_bytes_per_photo_for_vit_b16() -> None:
    assert bytes_per_photo("fp16", (197, 768)) == 302_592
    assert bytes_per_photo("int8", (197, 768)) == 151_296 + 394
    assert bytes_per_photo("none", (197, 768)) == 0
    with pytest.raises(ValueError, match="unknown token format"):
        bytes_per_photo("int4", (197, 768))


@pytest.mark.parametrize("fmt", ["fp16", "int8"])
def test_segments_gather_rows_in_the_order_asked(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(1)
    first, second = rng.standard_normal((6, 5, 8)).astype(np.float32), rng.standard_normal((4, 5, 8)).astype(np.float32)
    layout = empty_layout(fmt, (5, 8))
    layout["segments"].append(write_segment(tmp_path, layout, 6, [encode_tokens(first[:4], fmt),
                                                                  encode_tokens(first[4:], fmt)]))
    copy = tmp_path / "copy"
    copy.mkdir()
    link_segments(tmp_path, copy, layout)  # as `add` does: old segments linked, a new one written
    layout["segments"].append(write_segment(copy, layout, 4, [encode_tokens(second, fmt)]))
    store = TokenStore(copy, layout)
    assert len(store) == 10
    every = np.concatenate([first, second])
    rows = np.array([9, 0, 5, 6, 2, 2])
    tolerance = 1e-3 if fmt == "fp16" else np.abs(every).max() / 127
    np.testing.assert_allclose(store.gather(rows), every[rows], atol=tolerance, rtol=1e-3)
    assert store.gather(np.zeros(0, dtype=np.int64)).shape == (0, 5, 8)


def test_segment_row_count_is_checked(tmp_path: Path) -> None:
    layout = empty_layout("fp16", (2, 3))
    with pytest.raises(ValueError, match="expected 5 rows, got 2"):
        write_segment(tmp_path, layout, 5, [encode_tokens(np.zeros((2, 2, 3)), "fp16")])
