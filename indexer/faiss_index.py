"""FAISS side of the indexer: factory choice and checks, training, adding with ids, search settings.

All indexes use inner product on L2-normalised float32 vectors (cosine similarity). The same code
runs with and without GPUs: when `faiss.get_num_gpus() > 0` the index is trained and filled on all
GPUs and copied back to CPU for saving; a type without a GPU implementation (HNSW) stays on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import faiss
import numpy as np

from indexer.errors import FactoryError

# Gallery sizes at which the default index type changes (see `default_factory`).
FLAT_LIMIT = 50_000
IVF_FLAT_LIMIT = 2_000_000
# GPU k-selection handles at most this many neighbours; larger searches use the CPU copy.
GPU_MAX_K = 2048
DEFAULT_EF_SEARCH = 128
_PQ_SUBQUANTIZERS = (48, 32, 24, 16, 12, 8, 4)  # all have GPU IVFPQ kernels with float32 lookup tables


def default_factory(count: int, dim: int) -> str:
    """Factory string chosen from the gallery size `count` and vector dimension `dim`.

    - fewer than 50k photos: `Flat` (exact; a 50k x 768 scan is 38M multiply-adds per query, a few ms);
    - up to 2M: `IVF{n},Flat` with n = 4*sqrt(count) lists (exact vectors, ~1/8 of lists probed);
    - 2M and more: `IVF{n},PQ{m}`, m the largest of 48, 32, 24, 16, ... dividing `dim` (m bytes per
      vector instead of 4*dim), so the vectors of millions of photos stay in memory.
    IVF is preferred to HNSW above 50k because it trains and searches on GPU and adds quickly.
    """
    if count < FLAT_LIMIT:
        return "Flat"
    if count < IVF_FLAT_LIMIT:
        return f"IVF{nlist_for(count)},Flat"
    return ivf_pq_factory(count, dim)


def ivf_pq_factory(count: int, dim: int) -> str:
    """`IVF{n},PQ{m}` with n = 4*sqrt(count) lists and m the largest of 48, 32, 24, ... dividing `dim`;
    `IVF{n},Flat` when none divides it."""
    nlist = nlist_for(count)
    for subquantizers in _PQ_SUBQUANTIZERS:
        if dim % subquantizers == 0:
            return f"IVF{nlist},PQ{subquantizers}"
    return f"IVF{nlist},Flat"


def nlist_for(count: int) -> int:
    # 4*sqrt(n) lists keeps list scans and the coarse search balanced; FAISS wants >= 39 points per list.
    return max(1, min(int(4 * math.sqrt(count)), count // 39))


def create_index(factory: str, dim: int) -> faiss.Index:
    """An empty inner-product index for `factory` that accepts explicit int64 ids.

    Types without their own id storage (Flat, HNSW, ...) are wrapped in `IDMap2`; IVF types keep ids
    in their inverted lists. Raises `FactoryError` (one line) for a string FAISS cannot build.
    """
    text = factory.strip()
    if not text:
        raise FactoryError("empty FAISS factory string")
    try:
        index = faiss.index_factory(dim, text, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise FactoryError(f"FAISS cannot build index type {text!r} for dimension {dim}: {_faiss_reason(error)}") \
            from error
    if faiss.try_extract_index_ivf(index) is None and not text.upper().startswith("IDMAP"):
        index = faiss.index_factory(dim, f"IDMap2,{text}", faiss.METRIC_INNER_PRODUCT)
    _skip_polysemous_training(index)
    return index


def _skip_polysemous_training(index: faiss.Index) -> None:
    """Turn off the polysemous training FAISS's factory turns on for PQ codes. It reorders the codebook
    so that Hamming distances between codes mean something, which only a polysemous search
    (`polysemous_ht`) reads; searches here compare codes by their reconstructed distances, which the
    reordering leaves as they are. It was 95 % of training an IVF-PQ on 3,000 vectors (40 of 42 s,
    2 cores)."""
    inner: Any = faiss.try_extract_index_ivf(index)
    if inner is None and isinstance(index, faiss.IndexIDMap):
        inner = index.index
    if inner is not None and hasattr(inner := faiss.downcast_index(inner), "do_polysemous_training"):
        inner.do_polysemous_training = False


def check_factory(factory: str, dim: int, count: int) -> None:
    """Raise `FactoryError` before any embedding when `factory` cannot index `count` photos of `dim`."""
    index = create_index(factory, dim)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.nlist > count:
        raise FactoryError(
            f"index type {factory!r} has {ivf.nlist} lists but the gallery lists only {count} photos; "
            f"use fewer lists or the default ({default_factory(count, dim)!r})"
        )
    if ivf is not None:
        concrete = faiss.downcast_index(ivf)
        product = getattr(concrete, "pq", None)
        if product is not None and product.ksub > count:
            raise FactoryError(
                f"index type {factory!r} needs at least {product.ksub} photos to train its product quantiser; "
                f"the gallery lists {count}"
            )


def train_sample_size(index: faiss.Index, count: int) -> int:
    """How many vectors to train on: 64 per IVF list (at least 65,536), at most all of them."""
    ivf = faiss.try_extract_index_ivf(index)
    wanted = max(65_536, 64 * (ivf.nlist if ivf is not None else 1))
    return min(count, wanted)


def build_index(vectors: np.ndarray, ids: np.ndarray, factory: str, *, seed: int = 0) -> faiss.Index:
    """Train (when needed) and fill an index; returns it in CPU form, ready for `faiss.write_index`.

    vectors: float32 `[N, D]`, L2-normalised. ids: int64 `[N]`, unique.
    The training sample is drawn with a fixed seed, so equal inputs give equal index files.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    index = create_index(factory, vectors.shape[1])
    on_gpu = to_gpu(index)
    working = on_gpu if on_gpu is not None else index
    try:
        if not working.is_trained:
            working.train(train_sample(vectors, index, seed))
        working.add_with_ids(vectors, ids)
    except RuntimeError as error:
        raise FactoryError(f"FAISS could not build {factory!r} on {len(vectors)} vectors: {_faiss_reason(error)}") \
            from error
    return faiss.index_gpu_to_cpu(working) if working is not index else index


def train_sample(vectors: np.ndarray, index: faiss.Index, seed: int = 0) -> np.ndarray:
    """The rows of `vectors` [N, D] that `index` trains on: `train_sample_size` of them, drawn with
    `seed` and kept in order (float32, contiguous)."""
    rows = np.random.default_rng(seed).choice(len(vectors), size=train_sample_size(index, len(vectors)),
                                              replace=False)
    return np.ascontiguousarray(vectors[np.sort(rows)], dtype=np.float32)


def train_empty(factory: str, vectors: np.ndarray, seed: int = 0) -> faiss.Index:
    """An empty index of `factory` trained on `train_sample` of `vectors` float32 [N, D] (the rule
    `build_index` trains by; on the GPUs when there are any); returns its CPU form."""
    index = create_index(factory, vectors.shape[1])
    sample = train_sample(vectors, index, seed)
    on_gpu = to_gpu(index)
    working = on_gpu if on_gpu is not None else index
    try:
        working.train(sample)
    except RuntimeError as error:
        raise FactoryError(f"FAISS could not train {factory!r} on {len(sample)} vectors: {_faiss_reason(error)}") \
            from error
    return faiss.index_gpu_to_cpu(working) if working is not index else index


def add_to_index(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """Add vectors with ids to a trained CPU index (on GPU when there is one); returns the CPU form."""
    on_gpu = to_gpu(index)
    working = on_gpu if on_gpu is not None else index
    working.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    return faiss.index_gpu_to_cpu(working) if working is not index else index


def stored_search_params(entry: Mapping[str, Any]) -> dict[str, int]:
    """The search-time settings (`nprobe`, `efSearch`) a manifest entry holds."""
    return {key: int(entry[key]) for key in ("nprobe", "efSearch") if key in entry}


def default_search_params(index: faiss.Index) -> dict[str, int]:
    """Search-time settings stored in the manifest: `nprobe` for IVF, `efSearch` for HNSW.

    nprobe = nlist / 8 (at least 16, at most nlist and 2048): on clustered embeddings this keeps recall@10
    against exact search above 0.95 while scanning an eighth of the vectors.
    """
    params: dict[str, int] = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        # Capped at GPU_MAX_K: GPU IVF kernels take at most that many probes.
        params["nprobe"] = int(min(ivf.nlist, max(16, ivf.nlist // 8), GPU_MAX_K))
    if _find_hnsw(index) is not None:
        params["efSearch"] = DEFAULT_EF_SEARCH
    return params


def apply_search_params(index: faiss.Index, params: Mapping[str, int]) -> None:
    """Set `nprobe` / `efSearch` on a CPU or GPU index (wrappers such as IDMap2 are looked through)."""
    if not params:
        return
    # GpuParameterSpace also handles CPU indexes (it falls back to ParameterSpace), and replicas on several GPUs.
    use_gpu_space = gpu_count() > 0 and hasattr(faiss, "GpuParameterSpace")
    space = faiss.GpuParameterSpace() if use_gpu_space else faiss.ParameterSpace()
    for name, value in params.items():
        space.set_index_parameter(index, name, float(value))


def ef_search(index: faiss.Index) -> int | None:
    """The current HNSW efSearch of `index`, None when it has no HNSW graph."""
    hnsw = _find_hnsw(index)
    return None if hnsw is None else int(hnsw.hnsw.efSearch)


def describe(index: faiss.Index) -> str:
    """One line naming the nested index types and their main sizes, e.g. `IndexIVFFlat(nlist=64)`."""
    concrete = faiss.downcast_index(index)
    name = type(concrete).__name__
    details: list[str] = []
    if hasattr(concrete, "nlist"):
        details.append(f"nlist={concrete.nlist}")
    if hasattr(concrete, "pq"):
        details.append(f"pq={concrete.pq.M}x{concrete.pq.nbits}bit")
    if hasattr(concrete, "hnsw"):
        details.append(f"M={concrete.hnsw.nb_neighbors(1)},efConstruction={concrete.hnsw.efConstruction}")
    inner = getattr(concrete, "index", None)
    if inner is not None and name.startswith(("IndexIDMap", "IndexPreTransform", "IndexRefine")):
        details.insert(0, describe(inner))
    details.append(f"d={concrete.d}")
    return f"{name}({', '.join(details)})"


def gpu_count() -> int:
    # CPU-only FAISS builds have no get_num_gpus.
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def to_gpu(index: faiss.Index) -> faiss.Index | None:
    """A copy of `index` on all GPUs, or None without GPUs or for a type FAISS cannot move (HNSW)."""
    if gpu_count() == 0:
        return None
    try:
        return faiss.index_cpu_to_all_gpus(index)
    except (RuntimeError, AttributeError):
        return None


def metadata(index: faiss.Index, factory: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's `faiss` entry."""
    return {
        "factory": factory,
        "description": describe(index),
        "metric": "inner_product",
        "normalized": True,
        "ntotal": int(index.ntotal),
        **{name: int(value) for name, value in params.items()},
    }


def _find_hnsw(index: faiss.Index) -> Any:
    concrete: Any = faiss.downcast_index(index)
    while concrete is not None:
        if hasattr(concrete, "hnsw"):
            return concrete
        inner = getattr(concrete, "index", None)
        concrete = faiss.downcast_index(inner) if inner is not None else None
    return None


def _faiss_reason(error: Exception) -> str:
    # FAISS messages start with "Error in <C++ signature> at <file>:<line>:"; keep the human part.
    text = " ".join(str(error).split())
    for marker in ("failed: ", "could not parse"):
        if marker in text:
            start = text.index(marker)
            return text[start + len("failed: "):] if marker == "failed: " else text[start:]
    return text.rsplit(": ", 1)[-1]
