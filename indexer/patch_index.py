"""Patch index: every gallery patch token in FAISS, and every patch's pixels, for sketch-to-photo
synthesis over the whole gallery (ZSE-SBIR Figure 7b: each sketch patch replaced by the mean of its
k nearest gallery patches).

Built by `sbir index build --patch-index` from the token store (so it needs `--tokens fp16|int8`):

- `patches.faiss`: inner product over the L2-normalised self-attention patch tokens (cosine), id
  `image_id * N + cell` with N = 196 patches per photo and cell row-major on the 14x14 grid. Patches
  dropped by token selection are not indexed. Factory by patch count (`default_patch_factory`):
  `Flat` while a query batch of 196 patches scans at most 2^22 floats, else `IVF{4 sqrt(n)},PQ{m}`.
- `patch-pixels-NNN.u8.npy`: uint8 `[rows, N, 16, 16, 3]`, the photo as the model saw it (resized to
  224x224 RGB) cut into its patches, one segment per build or `add`, in the token store's row order.
  Stored so that a synthesis reads up to 196*k patches from a memory map instead of decoding as many
  photos; 150,528 bytes per photo.

The manifest's `patch_index` entry records the factory, search settings, id formula and pixel
segments; `GalleryIndex.patch_index` opens it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer import faiss_index
from indexer.errors import FactoryError, IndexerError
from indexer.token_store import TokenStore, link_or_copy

PATCH_INDEX_FILE = "patches.faiss"
# Flat while 196 query patches x count x dim stays under 0.8e9 multiply-adds: measured 0.11 s per
# sketch on 2 CPU cores (43,690 patches of 96 dims, or 5,461 of 768); 2^24 floats took 0.5 s.
FLAT_FLOATS_LIMIT = 2**22
_IMAGES_PER_CHUNK = 256  # photos whose patches are read, normalised and added at once


def default_patch_factory(count: int, dim: int) -> str:
    """FAISS factory for `count` patch vectors of `dim`: `Flat` for small galleries (exact), else
    `IVF{n},PQ{m}` with n = 4*sqrt(count) lists and m the largest of 48, 32, ... dividing `dim`
    (m bytes per patch: a Sketchy gallery has 3.35M patches, 10 GB as float32 ViT-B/16 tokens)."""
    if count * dim <= FLAT_FLOATS_LIMIT:
        return "Flat"
    return faiss_index.ivf_pq_factory(count, dim)


def check_patch_factory(factory: str, dim: int, count: int) -> None:
    """Raise `FactoryError` (before any embedding) when `factory` cannot index `count` patches."""
    try:
        faiss_index.check_factory(factory, dim, count)
    except FactoryError as error:
        raise FactoryError(f"patch index: {str(error).replace('photos', 'patches')}") from None


def _photo_patches(path: str, image_size: int, grid: int) -> np.ndarray:
    """uint8 [G*G, p, p, 3]: the photo resized as `models.preprocess.photo` does, cut into patches."""

    from models.explain import image_patches
    from models.preprocess import photo_pixels, read_image

    try:
        rgb = photo_pixels(read_image(path), image_size)
    except (OSError, SyntaxError, ValueError) as error:
        raise IndexerError(f"patch index: cannot read {path}: {error}") from None
    return image_patches(np.asarray(rgb, dtype=np.uint8), grid)


def _normalised_patches(tokens: np.ndarray, kept: np.ndarray | None, ids: np.ndarray,
                        count: int) -> tuple[np.ndarray, np.ndarray]:
    """tokens float32 [B, 1+n, D] of photos `ids` -> (vectors [M, D] L2-normalised, patch ids [M])."""
    patches = tokens[:, 1:]
    cells = np.broadcast_to(np.arange(patches.shape[1]), patches.shape[:2]) if kept is None else kept
    norms = np.linalg.norm(patches, axis=-1, keepdims=True)
    vectors = patches / np.where(norms > 0, norms, 1.0)
    patch_ids = ids[:, None].astype(np.int64) * count + cells.astype(np.int64)
    return np.ascontiguousarray(vectors.reshape(-1, tokens.shape[-1]), dtype=np.float32), patch_ids.reshape(-1)


def _train(index: Any, store: TokenStore, rows: np.ndarray, ids: np.ndarray, count: int, seed: int) -> None:
    """Train an IVF / PQ index on the patches of a fixed-seed sample of photos."""
    if index.is_trained:
        return
    total = len(rows) * count
    wanted = faiss_index.train_sample_size(index, total)
    photos = min(len(rows), math.ceil(wanted / count))
    picked = np.sort(np.random.default_rng(seed).choice(len(rows), size=photos, replace=False))
    kept = store.gather_kept(rows[picked])
    vectors, _ = _normalised_patches(store.gather(rows[picked]), kept, ids[picked], count)
    index.train(vectors)


def _write_patches(index: Any, store: TokenStore, rows: np.ndarray, ids: np.ndarray, paths: Sequence[str],
                   pixel_file: Path, config: Any) -> None:
    """Add the patches of photos (`rows` of the store, `ids`, `paths`) to `index` and write their pixels."""
    grid, side = config.grid_size, config.patch_size
    count = grid * grid
    pixels = np.lib.format.open_memmap(pixel_file, mode="w+", dtype=np.uint8, shape=(len(rows), count, side, side, 3))
    for start in range(0, len(rows), _IMAGES_PER_CHUNK):
        stop = min(start + _IMAGES_PER_CHUNK, len(rows))
        chunk = rows[start:stop]
        vectors, patch_ids = _normalised_patches(store.gather(chunk), store.gather_kept(chunk), ids[start:stop], count)
        index.add_with_ids(vectors, patch_ids)
        for position in range(start, stop):
            pixels[position] = _photo_patches(paths[position], config.image_size, grid)
    pixels.flush()
    del pixels


def patch_search_params(index: Any) -> dict[str, int]:
    """`nprobe` = nlist / 64 (at least 16) for an IVF patch index.

    Lower than the photo index's nlist / 8: a synthesis searches 196 patches at once, and on the
    demo gallery (481k patches, IVF2775,PQ48) nlist / 8 = 346 probes take 0.39 s per sketch where
    43 take 0.055 s, returning neighbours of the same mean cosine to the sketch patch (0.9956; exact
    top-5: 0.9962): background and stroke patches have many near-equal neighbours.
    """
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return {}
    return {"nprobe": int(min(ivf.nlist, max(16, ivf.nlist // 64), faiss_index.GPU_MAX_K))}


def _skip_polysemous_training(index: Any) -> None:
    """IVF-PQ trains polysemous codes by default (a slow annealing, tens of seconds even for a few
    thousand patches); searches here never use them, so that step is skipped."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    concrete = faiss.downcast_index(ivf) if ivf is not None else None
    if concrete is not None and hasattr(concrete, "do_polysemous_training"):
        concrete.do_polysemous_training = False


def _pixel_entry(number: int, rows: int) -> dict[str, Any]:
    return {"rows": int(rows), "file": f"patch-pixels-{number:03d}.u8.npy"}


def _entry(index: Any, factory: str, params: dict[str, int], config: Any, segments: list[dict[str, Any]]) -> dict[str, Any]:
    count = config.grid_size**2
    side = config.patch_size
    return {
        **faiss_index.metadata(index, factory, params),
        "file": PATCH_INDEX_FILE,
        "vectors": "self-attention patch tokens from the token store, L2-normalised",
        "ids": f"image_id * {count} + cell (row-major on the {config.grid_size}x{config.grid_size} grid)",
        "patches_per_image": count,
        "grid": config.grid_size,
        "patch_size": side,
        "pixels": {"shape": [count, side, side, 3], "dtype": "uint8", "bytes_per_photo": count * side * side * 3,
                   "source": f"photo resized to {config.image_size}x{config.image_size} RGB",
                   "segments": segments},
    }


def build_patch_index(directory: Path, token_layout: dict[str, Any], ids: np.ndarray, paths: Sequence[str],
                      factory: str, config: Any, *, seed: int = 0) -> dict[str, Any]:
    """Write `patches.faiss` and the first pixel segment into `directory` (a staging folder whose
    token store is already written, rows in `ids` order); returns the manifest's `patch_index` entry.

    ids int64 [M] photo ids in token-store row order; paths [M] their files; config: the ZSE config.
    """
    import faiss

    store = TokenStore(directory, token_layout)
    try:
        rows = np.arange(len(ids), dtype=np.int64)
        index = faiss_index.create_index(factory, int(token_layout["shape"][1]))
        _skip_polysemous_training(index)
        gpu_index = faiss_index.to_gpu(index)
        working = gpu_index if gpu_index is not None else index
        try:
            _train(working, store, rows, np.asarray(ids), config.grid_size**2, seed)
            segment = _pixel_entry(0, len(ids))
            _write_patches(working, store, rows, np.asarray(ids), paths, directory / segment["file"], config)
        except RuntimeError as error:
            raise FactoryError(f"FAISS could not build the patch index {factory!r}: {error}") from error
    finally:
        store.close()
    index = faiss.index_gpu_to_cpu(working) if working is not index else index
    params = patch_search_params(index)
    faiss.write_index(index, str(directory / PATCH_INDEX_FILE))
    return _entry(index, factory, params, config, [segment])


def extend_patch_index(source: Path, staging: Path, entry: dict[str, Any], token_layout: dict[str, Any],
                       ids: np.ndarray, paths: Sequence[str], first_row: int, config: Any) -> dict[str, Any]:
    """`index add`: the patch index of `source` plus the photos `ids` (token-store rows from
    `first_row` in `staging`), written into `staging`; old pixel segments are hard-linked."""
    import faiss

    index = faiss.read_index(str(source / entry["file"]))
    segments = [dict(segment) for segment in entry["pixels"]["segments"]]
    for segment in segments:
        link_or_copy(source / segment["file"], staging / segment["file"])
    store = TokenStore(staging, token_layout)
    try:
        segment = _pixel_entry(len(segments), len(ids))
        rows = np.arange(first_row, first_row + len(ids), dtype=np.int64)
        _write_patches(index, store, rows, np.asarray(ids), paths, staging / segment["file"], config)
    finally:
        store.close()
    faiss.write_index(index, str(staging / PATCH_INDEX_FILE))
    params = faiss_index.stored_search_params(entry)
    return _entry(index, entry["factory"], params, config, [*segments, segment])


class PatchIndex:
    """Read side: nearest gallery patches of query patch vectors, and patch pixels by (image, cell).

    rows_of: maps image ids to token-store rows (`RecordTable.rows`); KeyError for unknown ids.
    """

    def __init__(self, directory: Path, entry: dict[str, Any], rows_of: Callable[[np.ndarray], np.ndarray]):
        import faiss

        self.entry = entry
        self.count = int(entry["patches_per_image"])
        self.grid = int(entry["grid"])
        self.patch_size = int(entry["patch_size"])
        self._rows_of = rows_of
        self._index: Any = faiss.read_index(str(directory / entry["file"]))
        faiss_index.apply_search_params(self._index, faiss_index.stored_search_params(entry))
        self._pixels: list[np.ndarray] = []
        starts = [0]
        for segment in entry["pixels"]["segments"]:
            pixels = np.load(directory / segment["file"], mmap_mode="r")
            if pixels.shape != (segment["rows"], *entry["pixels"]["shape"]):
                raise IndexerError(f"{segment['file']}: shape {pixels.shape} does not match the manifest")
            self._pixels.append(pixels)
            starts.append(starts[-1] + int(segment["rows"]))
        self._starts = np.asarray(starts, dtype=np.int64)

    @property
    def dimension(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """k nearest gallery patches by cosine for each query vector float32 [Q, D] (normalised here).

        Returns image ids int64 [Q, k], cells int64 [Q, k] and scores float32 [Q, k], best first;
        -1 / -1 / -inf pad rows with fewer than k results.
        """
        queries = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dimension)
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        queries = np.ascontiguousarray(queries / np.where(norms > 0, norms, 1.0))
        scores, ids = self._index.search(queries, k)
        found = ids >= 0
        image_ids = np.where(found, ids // self.count, -1).astype(np.int64)
        cells = np.where(found, ids % self.count, -1).astype(np.int64)
        return image_ids, cells, np.where(found, scores, -np.inf).astype(np.float32)

    def pixels(self, image_ids: np.ndarray, cells: np.ndarray) -> np.ndarray:
        """uint8 [M, p, p, 3] pixels of patches (image_ids[m], cells[m]); KeyError for unknown ids."""
        image_ids = np.asarray(image_ids, dtype=np.int64).reshape(-1)
        cells = np.asarray(cells, dtype=np.int64).reshape(-1)
        rows = self._rows_of(image_ids)
        out = np.empty((len(rows), self.patch_size, self.patch_size, 3), dtype=np.uint8)
        segment_of = np.searchsorted(self._starts, rows, side="right") - 1
        for segment in np.unique(segment_of):
            positions = np.nonzero(segment_of == segment)[0]
            out[positions] = self._pixels[segment][rows[positions] - self._starts[segment], cells[positions]]
        return out

    def close(self) -> None:
        self._pixels.clear()
        self._index = None
