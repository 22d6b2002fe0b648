"""On-disk IVF lists: built shard by shard and merged, they search exactly as the same index built
in memory; `add` writes new lists beside the staging files and leaves the published ones alone; the
directory can be moved (the lists file is found beside index.faiss)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from indexer import faiss_index, ondisk
from indexer.errors import FactoryError

FACTORY = "IVF16,PQ8x4"


def _vectors(count: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _shards(vectors: np.ndarray, ids: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(vectors[start : start + size], ids[start : start + size]) for start in range(0, len(ids), size)]


def _search(index: faiss.Index, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    index.nprobe = 4
    scores, ids = index.search(queries, k)
    return ids, scores


def test_merged_on_disk_lists_search_as_the_in_memory_index(tmp_path: Path) -> None:
    vectors = _vectors(3000)
    ids = np.arange(100, 3100, dtype=np.int64)  # explicit ids, not row numbers
    memory = faiss_index.build_index(vectors, ids, FACTORY)
    trained = faiss_index.train_empty(FACTORY, vectors)
    directory = tmp_path / "index"
    directory.mkdir()
    index = ondisk.build(_shards(vectors, ids, 700), trained, directory, tmp_path / "work")
    faiss.write_index(index, str(directory / "index.faiss"))
    del index

    # Published under another name: the lists are found beside index.faiss, not at the written path.
    moved = tmp_path / "published"
    directory.rename(moved)
    served = ondisk.read(moved)
    assert served.ntotal == len(ids)
    assert (moved / ondisk.IVFDATA_FILE).stat().st_size > 0
    assert (moved / "index.faiss").stat().st_size < (moved / ondisk.IVFDATA_FILE).stat().st_size
    queries = _vectors(20, seed=1)
    disk_ids, disk_scores = _search(served, queries)
    memory_ids, memory_scores = _search(memory, queries)
    np.testing.assert_array_equal(disk_ids, memory_ids)
    np.testing.assert_allclose(disk_scores, memory_scores, rtol=0, atol=1e-6)
    assert set(disk_ids.ravel()) <= set(ids.tolist())


def test_add_writes_new_lists_and_leaves_the_published_ones(tmp_path: Path) -> None:
    vectors = _vectors(2500)
    ids = np.arange(2500, dtype=np.int64)
    first, later = slice(0, 2000), slice(2000, 2500)
    published = tmp_path / "published"
    published.mkdir()
    trained = faiss_index.train_empty(FACTORY, vectors[first])
    index = ondisk.build(_shards(vectors[first], ids[first], 512), trained, published, tmp_path / "work")
    faiss.write_index(index, str(published / "index.faiss"))
    del index
    before = (published / ondisk.IVFDATA_FILE).read_bytes()

    staging = tmp_path / "staging"
    staging.mkdir()
    grown = ondisk.add(published, vectors[later], ids[later], staging, tmp_path / "work-add")
    faiss.write_index(grown, str(staging / "index.faiss"))
    del grown
    assert (published / ondisk.IVFDATA_FILE).read_bytes() == before
    shutil.rmtree(published)  # the new generation needs nothing from the old one
    served = ondisk.read(staging)
    assert served.ntotal == 2500

    # Against the same trained index filled in memory with all 2,500 (brute force over its lists).
    memory = faiss_index.add_to_index(faiss.clone_index(trained), vectors, ids)
    queries = _vectors(15, seed=2)
    disk_ids, disk_scores = _search(served, queries)
    memory_ids, memory_scores = _search(memory, queries)
    np.testing.assert_array_equal(disk_ids, memory_ids)
    np.testing.assert_allclose(disk_scores, memory_scores, rtol=0, atol=1e-6)
    assert (disk_ids >= 2000).any()  # the added photos are found


def test_only_ivf_types_can_live_on_disk() -> None:
    with pytest.raises(FactoryError, match="needs an IVF index type"):
        ondisk.check_factory("Flat", 32)
    with pytest.raises(FactoryError, match="needs an IVF index type"):
        ondisk.check_factory("HNSW16", 32)
    ondisk.check_factory(FACTORY, 32)


# The pipeline: `sbir index build --on-disk` and `sbir index add` on its result.

ON_DISK_OPTIONS = {"num_workers": 0, "progress": False, "batch_size": 8, "shard_size": 16, "index_type": "IVF2,Flat"}


def _top(index: Any, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ids and scores of 30 fixed random unit queries."""
    queries = _vectors(30, index.dimension, seed=3)
    scores, ids = index.search(queries, k)
    return ids, scores


def test_on_disk_build_and_add_search_as_the_in_memory_index(tmp_path: Path, checkpoint: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import indexer
    from service.cli import main
    from tests.support.datasets import make_folder_gallery

    make_folder_gallery(tmp_path / "gallery", {"a": 20, "b": 20})
    make_folder_gallery(tmp_path / "more", {"c": 8}, seed=50)
    memory = indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "memory", **ON_DISK_OPTIONS)
    disk = indexer.build(tmp_path / "gallery", checkpoint, tmp_path / "disk", on_disk=True, **ON_DISK_OPTIONS)
    assert {path.name for path in disk.iterdir()} >= {ondisk.IVFDATA_FILE, ondisk.TRAINED_FILE}
    with indexer.open(memory) as a, indexer.open(disk) as b:
        assert b.manifest["faiss"]["on_disk"] and "on_disk" not in a.manifest["faiss"]
        (ids_a, scores_a), (ids_b, scores_b) = _top(a), _top(b)
        np.testing.assert_array_equal(ids_b, ids_a)
        np.testing.assert_allclose(scores_b, scores_a, atol=1e-6)
        first = ids_b

    before = indexer.open(disk)  # a server's view of the first generation, open across the add
    try:
        for directory in (memory, disk):
            indexer.add(directory, tmp_path / "more", checkpoint, num_workers=0, progress=False, batch_size=8)
        with indexer.open(memory) as a, indexer.open(disk) as b:
            assert len(a) == len(b) == 48 and b.manifest["faiss"]["ntotal"] == 48
            (ids_a, scores_a), (ids_b, scores_b) = _top(a), _top(b)
            np.testing.assert_array_equal(ids_b, ids_a)
            np.testing.assert_allclose(scores_b, scores_a, atol=1e-6)
        # The first generation's lists were never written to: it answers as before the add.
        assert len(before) == 40
        np.testing.assert_array_equal(_top(before)[0], first)
    finally:
        before.close()

    assert main(["index", "info", str(disk)]) == 0
    serving = capsys.readouterr().out.strip().splitlines()[-1]
    assert serving.startswith("serving: ") and "loaded into RAM (index.faiss, manifest.json)" in serving

    status = main(["index", "build", "--gallery", str(tmp_path / "gallery"), "--checkpoint", str(checkpoint),
                   "--out", str(tmp_path / "flat"), "--on-disk", "--index-type", "Flat", "--no-progress"])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and "--on-disk needs an IVF index type" in error, error
    assert not (tmp_path / "flat").exists()
