"""IVF indexes whose inverted lists live on disk, memory-mapped at search time.

An on-disk index is two files in the index directory: ``index.faiss`` (the coarse centroids, the
product quantiser's codebooks and a reference to the lists: a few MB whatever the gallery's size)
and ``index.ivfdata`` (every list's codes and ids, FAISS ``OnDiskInvertedLists``). Serving keeps the
first in memory and maps the second, so a search touches only the pages of the lists it probes.

The build trains once, on a sample, and then adds each shard with its explicit ids into its own
*block* (an empty copy of the trained index, written to the work directory); the blocks' lists are
merged into one ``index.ivfdata``. ``index add`` merges the published lists and a block of the new
photos into a new ``index.ivfdata`` in the staging directory, so the published files are never
written to. The trained, empty index is kept (``index.trained.faiss``) for the blocks of later adds.

FAISS records the lists file by the path it was written at (the staging directory); reading with
``IO_FLAG_ONDISK_SAME_DIR`` looks for it beside ``index.faiss`` instead, wherever the directory
was published or copied to.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer import faiss_index
from indexer.errors import FactoryError
from indexer.manifest import INDEX_FILE
from models.atomic import write_bytes_atomic

IVFDATA_FILE = "index.ivfdata"
TRAINED_FILE = "index.trained.faiss"
# A published index: its lists file is found next to the index file (OnDiskInvertedLists maps it
# itself; adding IO_FLAG_MMAP to an on-disk index makes FAISS 1.15 crash on search).
READ_FLAGS = faiss.IO_FLAG_ONDISK_SAME_DIR
# A block (lists in the file itself): mapped, not loaded.
BLOCK_FLAGS = faiss.IO_FLAG_MMAP


def default_factory(count: int, dim: int) -> str:
    """The in-memory default (``faiss_index.default_factory``) where it is an IVF type; below its
    IVF size, ``IVF{n},Flat`` with its rule for n lists."""
    factory = faiss_index.default_factory(count, dim)
    return factory if factory.startswith("IVF") else f"IVF{faiss_index.nlist_for(count)},Flat"


def metadata(on_disk: bool) -> dict[str, Any]:
    """The manifest ``faiss`` entry's keys for the lists' place (none for an in-memory index)."""
    return {"on_disk": True, "lists_file": IVFDATA_FILE} if on_disk else {}


def check_factory(factory: str, dim: int) -> None:
    """Raise ``FactoryError`` unless ``factory`` is an IVF type (only IVF lists can live on disk)."""
    index = faiss_index.create_index(factory, dim)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        raise FactoryError(f"--on-disk needs an IVF index type (e.g. {faiss_index.ivf_pq_factory(10**6, dim)!r}), "
                           f"not {factory!r}")
    if isinstance(faiss.downcast_index(ivf), faiss.IndexIVFPQR):
        raise FactoryError(f"FAISS cannot keep the lists of {factory!r} (IVFPQR) on disk")


def write_block(trained: faiss.Index, vectors: np.ndarray, ids: np.ndarray, path: Path) -> Path:
    """One shard's block: a copy of ``trained`` holding ``vectors`` [M, D] under ``ids`` [M], written
    to ``path`` (temp then rename, so a resumed build never reads half a block)."""
    block = faiss_index.add_to_index(faiss.clone_index(trained), vectors, ids)
    return write_bytes_atomic(path, faiss.serialize_index(block).tobytes())


def open_block(path: Path) -> faiss.Index:
    """A block written by ``write_block``, its lists mapped rather than loaded."""
    return faiss.read_index(str(path), BLOCK_FLAGS)


def merge(trained: faiss.Index, opened: Sequence[faiss.Index], directory: Path) -> faiss.Index:
    """``trained`` (empty) filled with the lists of the ``opened`` indexes (blocks, or a published
    on-disk index, in id order), its lists in ``directory / index.ivfdata``; returns the index, ready
    for ``faiss.write_index`` into ``directory``. Merging reads one list at a time from the mapped
    files, so it needs memory for a list, not for the gallery.
    """
    lists = []
    for block in opened:
        ivf = faiss.extract_index_ivf(block)
        lists.append(ivf.invlists)
    index = faiss.clone_index(trained)
    ivf = faiss.extract_index_ivf(index)
    if index.ntotal != 0:
        raise ValueError("merge needs an empty trained index")
    target = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(directory / IVFDATA_FILE))
    pointers = faiss.InvertedListsPtrVector()  # type: ignore[attr-defined]  # SWIG, not in the stubs
    for inverted in lists:
        pointers.push_back(inverted)
    total = target.merge_from_multiple(pointers.data(), pointers.size(), False)
    index.ntotal = ivf.ntotal = total
    ivf.replace_invlists(target, True)
    target.this.disown()  # type: ignore[attr-defined]  # the index owns the lists now (SWIG ownership)
    return index


def build(shards: Iterable[tuple[np.ndarray, np.ndarray]], trained: faiss.Index, directory: Path,
          work_dir: Path) -> faiss.Index:
    """Fill ``trained`` shard by shard: each (vectors [M, D], ids [M]) becomes a block in ``work_dir``,
    then all blocks are merged into ``directory``'s lists file. Writes ``index.trained.faiss``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    blocks = [write_block(trained, vectors, ids, work_dir / f"block-{number:05d}.faiss")
              for number, (vectors, ids) in enumerate(shards) if len(ids)]
    save_trained(trained, directory)
    return merge(trained, [open_block(path) for path in blocks], directory)


def add(published: Path, vectors: np.ndarray, ids: np.ndarray, staging: Path, work_dir: Path) -> faiss.Index:
    """The published on-disk index of ``published`` plus ``vectors`` [M, D] under ``ids`` [M], written
    as a new lists file in ``staging`` (the published one is read, never written)."""
    trained = load_trained(published)
    work_dir.mkdir(parents=True, exist_ok=True)
    block = write_block(trained, vectors, ids, work_dir / "block-add.faiss")
    save_trained(trained, staging)
    return merge(trained, [read(published), open_block(block)], staging)


def save_trained(trained: faiss.Index, directory: Path) -> None:
    faiss.write_index(trained, str(directory / TRAINED_FILE))


def load_trained(directory: Path) -> faiss.Index:
    return faiss.read_index(str(directory / TRAINED_FILE))


def read(directory: Path) -> faiss.Index:
    """The published on-disk index of ``directory``, its lists memory-mapped from beside it."""
    return faiss.read_index(str(directory / INDEX_FILE), READ_FLAGS)


def is_on_disk(entry: dict[str, Any]) -> bool:
    """Whether a manifest's ``faiss`` entry describes an on-disk index."""
    return bool(entry.get("on_disk"))
