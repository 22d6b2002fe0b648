"""Read side of an index directory: `open(directory) -> GalleryIndex` (search, tokens, records)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer import faiss_index, ondisk
from indexer.errors import IndexerError, IndexMismatchError
from indexer.manifest import INDEX_FILE, MANIFEST_FILE, SKIPPED_FILE, manifest_signature, read_manifest
from indexer.manifest import built_with as manifest_built_with
from indexer.patch_index import PATCH_INDEX_FILE
from indexer.records import ImageRecord, RecordTable
from indexer.token_codec import CODEC_FILE, METRIC_FILE
from indexer.token_store import TokenStore


def open_index(directory: str | os.PathLike[str], checkpoint_hash: str | None = None, *,
               gpu: bool | None = None) -> GalleryIndex:
    """Open a published index directory.

    checkpoint_hash: sha256 of the checkpoint the caller will embed queries with; a different hash
        than the manifest's raises `IndexMismatchError` naming both (vectors of two checkpoints
        live in unrelated spaces, so searching across them would return noise).
    gpu: search on all GPUs; None = when `faiss.get_num_gpus() > 0`.
    """
    path = Path(directory).expanduser().absolute()
    signature = manifest_signature(path)  # before reading: a change meanwhile shows as a later change
    manifest = read_manifest(path)
    built_with = manifest["model"]["checkpoint_sha256"]
    if checkpoint_hash is not None and checkpoint_hash != built_with:
        raise IndexMismatchError(
            f"index {path} was built with {manifest_built_with(manifest)}, not a checkpoint of sha256 {checkpoint_hash}"
        )
    index = GalleryIndex(path, manifest, gpu=gpu)
    index.manifest_signature = signature
    return index


class GalleryIndex:
    """An opened index: FAISS search over the photos' vectors, their tokens and their records.

    Search and look-ups may be called from several threads at once.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], *, gpu: bool | None = None):
        import faiss

        self.directory = directory
        self.manifest = manifest
        # The manifest file as opened (indexer.manifest.manifest_signature), for a server watching for
        # a republish; set by `open_index`.
        self.manifest_signature: tuple[int, ...] | None = None
        self._patch_index: Any = None  # opened on first use of `patch_index`
        self._patch_lock = threading.Lock()
        on_disk = ondisk.is_on_disk(manifest["faiss"])
        # An on-disk index maps its lists (index.ivfdata) instead of loading them.
        self._index: Any = ondisk.read(directory) if on_disk else faiss.read_index(str(directory / INDEX_FILE))
        self._params = faiss_index.stored_search_params(manifest["faiss"])
        faiss_index.apply_search_params(self._index, self._params)
        # Lists kept on disk because they outgrow memory would outgrow a GPU's too: those search on the CPU.
        use_gpu = (faiss_index.gpu_count() > 0 and not on_disk) if gpu is None else gpu
        self._gpu_index: Any = faiss_index.to_gpu(self._index) if use_gpu else None
        if self._gpu_index is not None:
            faiss_index.apply_search_params(self._gpu_index, self._params)
        self._records = RecordTable(directory)
        layout = manifest["tokens"]
        self._tokens = TokenStore(directory, layout) if layout["format"] != "none" else None
        count = int(manifest["count"])
        sizes = {"faiss": int(self._index.ntotal), "ids": len(self._records)}
        if self._tokens is not None:
            sizes["tokens"] = len(self._tokens)
        if any(size != count for size in sizes.values()):
            self.close()
            raise IndexerError(f"{directory}: files disagree with the manifest count {count}: {sizes}")

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def dimension(self) -> int:
        return int(self.manifest["dimension"])

    @property
    def has_tokens(self) -> bool:
        return self._tokens is not None

    @property
    def ids(self) -> np.ndarray:
        """int64 `[N]` ids of all indexed photos, increasing."""
        return self._records.ids

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-`k` photos by cosine similarity for each query.

        vectors: float32 `[Q, D]` (or `[D]`), normalised here. Returns ids int64 `[Q, k]` and scores
        float32 `[Q, k]`, best first; when fewer than k photos are found the row is padded with
        id -1 and score -inf.
        """
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"query vectors must be [Q, {self.dimension}], got {list(np.shape(vectors))}")
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        queries = np.ascontiguousarray(queries / np.where(norms > 0, norms, 1.0))
        # HNSW returns at most efSearch results; raising it never lowers recall, so it only goes up.
        ef = faiss_index.ef_search(self._index)
        if ef is not None and ef < k:
            faiss_index.apply_search_params(self._index, {"efSearch": k})
        use_gpu = self._gpu_index is not None and k <= faiss_index.GPU_MAX_K
        scores, ids = (self._gpu_index if use_gpu else self._index).search(queries, k)
        ids = ids.astype(np.int64, copy=False)
        scores = scores.astype(np.float32, copy=False)
        scores[ids < 0] = -np.inf
        return ids, scores

    def tokens(self, ids: Any) -> Any:
        """torch float32 `[len(ids), T, D]` tokens of the photos `ids`, in that order.

        KeyError for an unknown id; RuntimeError when the index has no token store (built with
        `--tokens none`): then tokens must be recomputed from `record(id).path`.
        """
        import torch

        if self._tokens is None:
            raise RuntimeError(f"index {self.name!r} has no token store (built with --tokens none); "
                               "recompute tokens from the images")
        rows = self._records.rows(_as_ids(ids))
        return torch.from_numpy(self._tokens.gather(rows))

    def kept(self, ids: Any) -> Any:
        """torch int64 `[len(ids), n]` kept grid positions for models with token selection, else None."""
        import torch

        if self._tokens is None or not self._tokens.has_kept:
            return None
        rows = self._records.rows(_as_ids(ids))
        return torch.from_numpy(self._tokens.gather_kept(rows))

    def anchors(self, ids: Any) -> Any:
        """torch float32 `[len(ids), A, K]` stored self-attention anchors of the photos `ids` (for a
        prescore search), or None when the index stores none (``indexer.token_store``)."""
        import torch

        if self._tokens is None or not self._tokens.has_anchors:
            return None
        rows = self._records.rows(_as_ids(ids))
        return torch.from_numpy(self._tokens.gather_anchors(rows))

    @property
    def patch_index(self) -> Any:
        """The `PatchIndex` of an index built with `--patch-index` (opened on first use), else None."""
        entry = self.manifest.get("patch_index")
        if entry is None:
            return None
        with self._patch_lock:
            if self._patch_index is None:
                from indexer.patch_index import PatchIndex

                self._patch_index = PatchIndex(self.directory, entry, self._records.rows)
            return self._patch_index

    def record(self, image_id: int) -> ImageRecord:
        """The photo behind `image_id`; KeyError when the index has no such id."""
        return self._records.record(int(image_id))

    def close(self) -> None:
        self._records.close()
        if self._tokens is not None:
            self._tokens.close()
        if self._patch_index is not None:
            self._patch_index.close()
            self._patch_index = None
        self._index = None
        self._gpu_index = None

    def __enter__(self) -> GalleryIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GalleryIndex({str(self.directory)!r}, name={self.name!r}, count={len(self)})"


# What `GalleryIndex` reads whole into memory: the FAISS index (for an on-disk index only its
# centroids and codebooks: the lists stay in index.ivfdata), the token codec, the patch index (when
# used) and the manifest. Every other served file is memory-mapped or read per query. A codec with a
# metric is held twice, once to encode and once with the inverse folded in to decode.
_LOADED_FILES = (INDEX_FILE, MANIFEST_FILE, CODEC_FILE, METRIC_FILE, PATCH_INDEX_FILE)
# Kept for writers only: the trained empty index of on-disk adds and the build's skipped list.
_UNSERVED_FILES = (ondisk.TRAINED_FILE, SKIPPED_FILE)


@dataclass(frozen=True)
class Footprint:
    """Bytes that serving an index directory needs (`sbir index info`)."""

    loaded: int  # read whole into RAM when opened
    mapped: int  # memory-mapped or read per query: RAM only for the pages a query touches
    disk: int  # every file of the directory
    loaded_files: tuple[str, ...]


def footprint(directory: Path) -> Footprint:
    """RAM and disk an open `GalleryIndex` of `directory` needs (a GPU copy of the index comes on top)."""
    loaded = mapped = disk = 0
    names = []
    for path in sorted(directory.iterdir()):
        size = path.stat().st_size if path.is_file() else 0
        disk += size
        if path.name in _LOADED_FILES:
            loaded += size * (2 if path.name == CODEC_FILE and (directory / METRIC_FILE).is_file() else 1)
            names.append(path.name)
        elif path.name not in _UNSERVED_FILES:
            mapped += size
    return Footprint(loaded, mapped, disk, tuple(names))


def _as_ids(ids: Any) -> np.ndarray:
    if hasattr(ids, "detach"):  # a torch tensor
        ids = ids.detach().cpu().numpy()
    return np.asarray(ids, dtype=np.int64).reshape(-1)
