"""Token store: every photo's self-attention tokens `[T, D]`, memory-mapped, for relation re-ranking.

Formats (`fmt`):
  fp16: `[N, T, D]` float16 -> 2*T*D bytes per photo.
  int8: `[N, T, D]` int8 plus `[N, T]` float16 scales; symmetric absmax quantisation per token
        (scale = max|x| / 127, q = round(x / scale)) -> T*D + 2*T bytes per photo.
  rq:   `[N, T, C]` uint8 codes of a residual-quantised codec (`indexer.token_codec`: a centroid id
        plus residual-quantiser stages, C = `token_bytes`) -> T*C bytes per photo, decoded on read.
  none: nothing stored; the service recomputes tokens from the image.

Models with token selection (`Encoded.kept` not None) also store the kept grid positions, int16
`[N, n]`, which `relation` needs to put the tokens back on the grid.

Models with a pre-scorer (`models.prescore`) also store every photo's self-attention anchors,
float32 `[N, A, K]` (`layout["anchors"]`): they do not depend on the sketch, so a ``prescoreM``
search reads them instead of running the downsampling conv over its whole shortlist. They are
computed from the tokens as this store gives them back (`decode`), in float32, so a search reads
the numbers it would have computed.

A store is a list of segments (one per build or `add`), each a set of `.npy` files, so that `add`
never rewrites the tokens already published: the new index directory hard-links the old segments.
"""

from __future__ import annotations

import mmap
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from indexer import token_codec

TOKEN_FORMATS = ("fp16", "int8", "rq", "none")
DEFAULT_TOKEN_BYTES = 32
_INT8_MAX = 127.0


def bytes_per_photo(fmt: str, token_shape: Sequence[int], token_bytes: int = DEFAULT_TOKEN_BYTES) -> int:
    """Bytes the store spends on one photo with `token_shape = (T, D)` (`token_bytes`: rq only)."""
    tokens, width = int(token_shape[0]), int(token_shape[1])
    if fmt == "rq":
        return tokens * int(token_codec.describe(token_bytes)["code_size"])
    if fmt == "fp16":
        return 2 * tokens * width
    if fmt == "int8":
        return tokens * width + 2 * tokens
    if fmt == "none":
        return 0
    raise ValueError(f"unknown token format {fmt!r}; expected one of {', '.join(TOKEN_FORMATS)}")


def quantize_int8(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`[B, T, D]` float -> (`[B, T, D]` int8, `[B, T]` float16 scales); |error| <= scale / 2 per value."""
    tokens = np.asarray(tokens, dtype=np.float32)
    absmax = np.abs(tokens).max(axis=-1)
    # Round the scale to its stored dtype first, so quantising and dequantising use the same number.
    scales = (absmax / _INT8_MAX).astype(np.float16)
    divisor = scales.astype(np.float32)
    divisor = np.where(divisor > 0, divisor, 1.0)  # an all-zero token quantises to zeros
    quantized = np.clip(np.rint(tokens / divisor[..., None]), -_INT8_MAX, _INT8_MAX).astype(np.int8)
    return quantized, scales


def dequantize_int8(quantized: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Inverse of `quantize_int8`: `[B, T, D]` int8, `[B, T]` scales -> `[B, T, D]` float32."""
    return quantized.astype(np.float32) * scales.astype(np.float32)[..., None]


def encode_tokens(tokens: np.ndarray, fmt: str) -> dict[str, np.ndarray]:
    """Convert `[B, T, D]` float tokens to the stored arrays of `fmt` (keys `tokens`, `scales`)."""
    if fmt == "fp16":
        return {"tokens": np.asarray(tokens, dtype=np.float32).astype(np.float16)}
    if fmt == "int8":
        quantized, scales = quantize_int8(tokens)
        return {"tokens": quantized, "scales": scales}
    if fmt == "none":
        return {}
    raise ValueError(f"unknown token format {fmt!r}")


def decode(tokens: np.ndarray, scales: np.ndarray | None = None, codec: Any = None) -> np.ndarray:
    """Stored arrays of some photos (float16 tokens; int8 with their `scales`; uint8 codes when
    `codec` is an rq codec) -> float32 `[B, T, D]`: the values `TokenStore.gather` returns for them."""
    if codec is not None:
        return token_codec.decode(codec, tokens)
    if scales is not None:
        return dequantize_int8(tokens, scales)
    import torch

    # torch for the float16 -> float32 conversion: numpy's astype took about 7 of the 9 ms of
    # reading 100 demo photos on 2 cores.
    return torch.from_numpy(np.ascontiguousarray(tokens)).float().numpy()


def empty_layout(fmt: str, token_shape: Sequence[int] | None, kept: int | None = None,
                 token_bytes: int = DEFAULT_TOKEN_BYTES, anchors: Sequence[int] | None = None) -> dict[str, Any]:
    """The manifest's `tokens` entry for a store without segments yet; `kept` = n kept positions;
    `token_bytes`: the rq codec's budget per token; `anchors` = (A, K) to store each photo's
    self-attention anchors too (their bytes are counted apart from `bytes_per_photo`)."""
    shape = [int(value) for value in token_shape] if token_shape is not None and fmt != "none" else None
    codec = token_codec.describe(token_bytes) if fmt == "rq" and shape is not None else None
    quantization = {"int8": "symmetric absmax per token",
                    "rq": "residual: coarse centroid id + residual quantiser stages (indexer.token_codec)"}.get(fmt)
    return {
        "format": fmt,
        "shape": shape,
        "dtype": {"fp16": "float16", "int8": "int8", "rq": "uint8"}.get(fmt),
        "scale_dtype": "float16" if fmt == "int8" else None,
        "quantization": quantization,
        "codec": codec,
        "kept": int(kept) if kept is not None and shape is not None else None,
        "bytes_per_photo": (bytes_per_photo(fmt, shape, token_bytes) + 2 * (kept or 0)) if shape is not None else 0,
        "anchors": ({"shape": [int(value) for value in anchors], "dtype": "float32",
                     "bytes_per_photo": 4 * int(np.prod(anchors))} if anchors is not None and shape is not None
                    else None),
        "segments": [],
    }


def stored_shape(layout: Mapping[str, Any]) -> tuple[int, ...]:
    """Shape of one photo's stored array: (T, D), or (T, C) codes for rq."""
    shape = tuple(int(value) for value in layout["shape"])
    codec = layout.get("codec")
    return (shape[0], int(codec["code_size"])) if layout["format"] == "rq" and codec else shape


def write_segment(
    directory: Path,
    layout: dict[str, Any],
    rows: int,
    chunks: Iterable[Mapping[str, np.ndarray]],
) -> dict[str, Any]:
    """Write one segment of `rows` photos from `chunks` (dicts from `encode_tokens`, plus `kept` and,
    when the layout stores anchors, `anchors` [b, A, K]) into `directory`.

    Files are written in place: `directory` is a build's private staging folder that is published
    (or thrown away) as a whole. Returns the segment entry that is appended to `layout["segments"]`.
    """
    fmt = layout["format"]
    number = len(layout["segments"])
    token_shape = stored_shape(layout)
    suffix = {"fp16": "f16", "int8": "i8", "rq": "rq"}[fmt]
    entry: dict[str, Any] = {"rows": int(rows), "tokens": f"tokens-{number:03d}.{suffix}.npy", "scales": None,
                             "kept": None, "anchors": None}
    token_map = np.lib.format.open_memmap(
        directory / entry["tokens"], mode="w+", dtype=np.dtype(layout["dtype"]), shape=(rows, *token_shape)
    )
    scale_map = None
    if fmt == "int8":
        entry["scales"] = f"tokens-{number:03d}.scale.npy"
        scale_map = np.lib.format.open_memmap(
            directory / entry["scales"], mode="w+", dtype=np.float16, shape=(rows, token_shape[0])
        )
    kept_map = None
    if layout.get("kept"):
        entry["kept"] = f"tokens-{number:03d}.kept.npy"
        kept_map = np.lib.format.open_memmap(
            directory / entry["kept"], mode="w+", dtype=np.int16, shape=(rows, layout["kept"])
        )
    anchor_map = None
    if layout.get("anchors"):
        entry["anchors"] = f"tokens-{number:03d}.anchors.npy"
        anchor_map = np.lib.format.open_memmap(
            directory / entry["anchors"], mode="w+", dtype=np.float32, shape=(rows, *layout["anchors"]["shape"])
        )
    start = 0
    for chunk in chunks:
        count = len(chunk["tokens"])
        if count == 0:
            continue
        if tuple(chunk["tokens"].shape[1:]) != token_shape:
            raise ValueError(f"token shape {tuple(chunk['tokens'].shape[1:])} differs from {token_shape}")
        token_map[start:start + count] = chunk["tokens"]
        if scale_map is not None:
            scale_map[start:start + count] = chunk["scales"]
        if kept_map is not None:
            kept_map[start:start + count] = chunk["kept"]
        if anchor_map is not None:
            anchor_map[start:start + count] = chunk["anchors"]
        start += count
    if start != rows:
        raise ValueError(f"token segment expected {rows} rows, got {start}")
    for mapped in (token_map, scale_map, kept_map, anchor_map):
        if mapped is not None:
            mapped.flush()
    del token_map, scale_map, kept_map, anchor_map
    return entry


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link of a published (never modified) file: instant; a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def link_segments(source: Path, target: Path, layout: Mapping[str, Any]) -> None:
    """Make `layout`'s segment files of `source` appear in `target`: hard links (instant, and safe
    because segments are never modified after publication), else a copy across file systems."""
    for entry in layout["segments"]:
        for name in (entry["tokens"], entry["scales"], entry.get("kept"), entry.get("anchors")):
            if name is None:
                continue
            link_or_copy(source / name, target / name)
    codec = layout.get("codec")
    for name in (codec["file"], codec.get("metric_file")) if codec else ():
        # An index built before the metric has no metric file: it decodes without one.
        if name and (source / name).exists() and not (target / name).exists():
            link_or_copy(source / name, target / name)


def row_ranges(data_offset: int, row_bytes: int, rows: Iterable[int], page: int = mmap.PAGESIZE
               ) -> list[tuple[int, int]]:
    """Page-aligned (start, length) byte ranges of a map that cover ``rows`` of an array whose data
    begins ``data_offset`` bytes into the map, ``row_bytes`` a row; adjacent or overlapping ranges
    are merged, in ascending order."""
    merged: list[list[int]] = []
    for row in sorted(set(int(r) for r in rows)):
        begin = data_offset + row * row_bytes
        start, end = begin - begin % page, begin + row_bytes
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end - start) for start, end in merged]


def will_need(array: np.ndarray, rows: np.ndarray) -> None:
    """Ask the kernel to start reading the pages of ``rows`` of a memory-mapped ``array`` now, all at
    once, instead of one page fault at a time as they are copied: a shortlist of photos spread over a
    store larger than the page cache is then one round of concurrent reads. No-op for an array that
    is not memory-mapped, or where the platform lacks madvise."""
    handle = getattr(array, "_mmap", None)  # np.memmap keeps the mmap.mmap it views
    advice = getattr(mmap, "MADV_WILLNEED", None)
    if handle is None or advice is None or not hasattr(handle, "madvise") or not array.flags.c_contiguous:
        return
    # np.memmap maps from the allocation-granularity boundary below the .npy data's offset.
    data_offset = int(getattr(array, "offset", 0)) % mmap.ALLOCATIONGRANULARITY
    row_bytes = int(array.strides[0]) if array.ndim else int(array.nbytes)
    for start, length in row_ranges(data_offset, row_bytes, rows):
        handle.madvise(advice, start, min(length, len(handle) - start))


class TokenStore:
    """Read side: rows of all segments as one `[N, T, D]` table, gathered as float32."""

    def __init__(self, directory: Path, layout: Mapping[str, Any]):
        self.format = layout["format"]
        self.shape = tuple(layout["shape"])
        stored = stored_shape(layout)
        self._codec: Any = None
        if self.format == "rq":
            self._codec = token_codec.load(directory)
        self._tokens: list[np.ndarray] = []
        self._scales: list[np.ndarray | None] = []
        self._kept: list[np.ndarray | None] = []
        self._anchors: list[np.ndarray | None] = []
        starts = [0]
        for entry in layout["segments"]:
            tokens = np.load(directory / entry["tokens"], mmap_mode="r")
            if tokens.shape != (entry["rows"], *stored):
                raise ValueError(f"{entry['tokens']}: shape {tokens.shape} does not match the manifest")
            self._tokens.append(tokens)
            self._scales.append(np.load(directory / entry["scales"], mmap_mode="r") if entry["scales"] else None)
            self._kept.append(np.load(directory / entry["kept"], mmap_mode="r") if entry.get("kept") else None)
            self._anchors.append(np.load(directory / entry["anchors"], mmap_mode="r") if entry.get("anchors") else None)
            starts.append(starts[-1] + int(entry["rows"]))
        self._starts = np.asarray(starts, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """`rows` int64 `[K]` (0 <= row < len) -> float32 `[K, T, D]`, in the order asked."""
        # torch for the scatter back (numpy's fancy-index assignment was slow too; see `decode`).
        import torch

        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape), dtype=np.float32)
        target = torch.from_numpy(out)
        segment_of = np.searchsorted(self._starts, rows, side="right") - 1
        for segment in np.unique(segment_of):
            positions = np.nonzero(segment_of == segment)[0]
            local = rows[positions] - self._starts[segment]
            # Read in ascending row order (kinder to the page cache), then scatter back.
            order = np.argsort(local, kind="stable")
            will_need(self._tokens[segment], local)
            scales = self._scales[segment]
            values = decode(self._tokens[segment][local[order]], None if scales is None else scales[local[order]],
                            self._codec)
            target.index_copy_(0, torch.from_numpy(positions[order]), torch.from_numpy(values))
        return out

    @property
    def has_anchors(self) -> bool:
        return bool(self._anchors) and all(anchors is not None for anchors in self._anchors)

    def gather_anchors(self, rows: np.ndarray) -> np.ndarray | None:
        """float32 `[K, A, C]` self-attention anchors of `rows`, None when the store has none."""
        return self._gather_rows(self._anchors, rows, np.float32) if self.has_anchors else None

    @property
    def has_kept(self) -> bool:
        return bool(self._kept) and all(kept is not None for kept in self._kept)

    def gather_kept(self, rows: np.ndarray) -> np.ndarray | None:
        """int64 `[K, n]` kept grid positions of `rows`, None when the model keeps every token."""
        return self._gather_rows(self._kept, rows, np.int64) if self.has_kept else None

    def _gather_rows(self, tables: Sequence[np.ndarray | None], rows: np.ndarray, dtype: Any) -> np.ndarray:
        """`rows` of per-segment `tables` (none of them None) as one `dtype` array, in the order asked."""
        present = cast("Sequence[np.ndarray]", tables)  # the has_* property checked
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        segment_of = np.searchsorted(self._starts, rows, side="right") - 1
        out = np.empty((len(rows), *present[0].shape[1:]), dtype=dtype)
        for segment in np.unique(segment_of):
            positions = np.nonzero(segment_of == segment)[0]
            out[positions] = present[segment][rows[positions] - self._starts[segment]]
        return out

    def close(self) -> None:
        # Dropping the references unmaps the files (numpy memmaps close when collected).
        self._codec = None
        self._tokens.clear()
        self._scales.clear()
        self._kept.clear()
        self._anchors.clear()
