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


@pytest.mark.parametrize(("offset", "row_bytes"), [(128, 6304), (4096 + 80, 100), (0, 37824)])
def test_read_ahead_ranges_cover_exactly_the_pages_of_the_rows_asked(offset: int, row_bytes: int) -> None:
    from indexer.token_store import row_ranges

    rows = [7, 3, 8, 3, 400, 0]
    ranges = row_ranges(offset, row_bytes, rows, page=4096)
    covered = set()
    for start, length in ranges:
        assert start % 4096 == 0 and length > 0
        covered.update(range(start, start + length))
    wanted = {byte for row in set(rows) for byte in range(offset + row * row_bytes, offset + (row + 1) * row_bytes)}
    assert wanted <= covered
    # Nothing beyond the pages that hold asked rows: each covered byte shares a page with a wanted one.
    assert {byte // 4096 for byte in covered} == {byte // 4096 for byte in wanted}
    assert all(a[0] + a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # merged, ascending


def test_read_ahead_on_a_memory_mapped_store_changes_no_value(tmp_path: Path) -> None:
    from indexer.token_store import will_need

    values = np.random.default_rng(0).standard_normal((50, 197, 8)).astype(np.float16)
    np.save(tmp_path / "t.npy", values)
    mapped = np.load(tmp_path / "t.npy", mmap_mode="r")
    rows = np.array([49, 2, 17, 2])
    will_need(mapped, rows)
    will_need(values, rows)  # not mapped: nothing to do
    np.testing.assert_array_equal(mapped[rows], values[rows])
