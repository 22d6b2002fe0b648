"""The id table of an index directory: which photo each FAISS id (and token-store row) stands for.

Files (row r describes the r-th vector added to FAISS and the r-th token-store row):
  ids.npy          int64 `[N]`, strictly increasing (ids are handed out in gallery order and `add`
                   continues the sequence), so id -> row is a binary search on a memory map;
  records.jsonl    one JSON object per row: id, key, path, label, metadata;
  records.idx.npy  int64 `[N + 1]` byte offsets of the lines, so one record is one seek and read.
Nothing is parsed into Python objects at open time, which keeps opening a million-photo index cheap.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

IDS_FILE = "ids.npy"
RECORDS_FILE = "records.jsonl"
OFFSETS_FILE = "records.idx.npy"


@dataclass(frozen=True)
class ImageRecord:
    """One indexed photo. `key` is the gallery's own identifier (manifest id or relative path)."""

    id: int
    path: str
    label: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    key: str | None = None

    def to_json(self) -> str:
        value = {"id": self.id, "key": self.key, "path": self.path, "label": self.label, "metadata": self.metadata}
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def write_records(directory: Path, records: Sequence[ImageRecord], previous: Path | None = None) -> None:
    """Write the id table into `directory` (a private staging folder, so plain writes suffice).

    previous: an index directory whose rows come first (for `add`); its records file is copied
    byte for byte and the new records are appended after it.
    """
    old_ids = np.load(previous / IDS_FILE) if previous is not None else np.zeros(0, dtype=np.int64)
    old_offsets = np.load(previous / OFFSETS_FILE) if previous is not None else np.zeros(1, dtype=np.int64)
    new_ids = np.asarray([record.id for record in records], dtype=np.int64)
    ids = np.concatenate([old_ids, new_ids])
    if len(ids) > 1 and not np.all(np.diff(ids) > 0):
        raise ValueError("image ids must be strictly increasing in row order")
    if previous is not None:
        shutil.copyfile(previous / RECORDS_FILE, directory / RECORDS_FILE)
    offsets = [int(old_offsets[-1])]
    with open(directory / RECORDS_FILE, "ab") as handle:
        for record in records:
            line = (record.to_json() + "\n").encode()
            handle.write(line)
            offsets.append(offsets[-1] + len(line))
    np.save(directory / IDS_FILE, ids, allow_pickle=False)
    np.save(directory / OFFSETS_FILE, np.concatenate([old_offsets[:-1], np.asarray(offsets, dtype=np.int64)]),
            allow_pickle=False)


def iter_records(directory: Path) -> Iterable[ImageRecord]:
    """All records of an index directory in row order."""
    with open(directory / RECORDS_FILE, encoding="utf-8") as handle:
        for line in handle:
            yield _parse(line)


class RecordTable:
    """Read side of the id table: id -> row and id -> `ImageRecord`."""

    def __init__(self, directory: Path):
        self._ids = np.load(directory / IDS_FILE, mmap_mode="r")
        self._offsets = np.load(directory / OFFSETS_FILE, mmap_mode="r")
        if len(self._offsets) != len(self._ids) + 1:
            raise ValueError(f"{directory}: {OFFSETS_FILE} does not match {IDS_FILE}")
        # A raw descriptor read with os.pread: no shared file position, so lookups are thread-safe.
        self._descriptor: int | None = os.open(directory / RECORDS_FILE, os.O_RDONLY)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def ids(self) -> np.ndarray:
        """int64 `[N]` ids in row order (read-only memory map)."""
        return self._ids

    def rows(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """int64 `[K]` rows of `ids`; KeyError naming the first unknown id."""
        wanted = np.asarray(ids, dtype=np.int64).reshape(-1)
        rows = np.searchsorted(self._ids, wanted)
        inside = rows < len(self._ids)
        found = np.zeros(len(wanted), dtype=bool)
        found[inside] = self._ids[rows[inside]] == wanted[inside]
        if not found.all():
            raise KeyError(int(wanted[~found][0]))
        return rows.astype(np.int64)

    def record(self, image_id: int) -> ImageRecord:
        row = int(self.rows([int(image_id)])[0])
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        if self._descriptor is None:
            raise ValueError("record table is closed")
        return _parse(os.pread(self._descriptor, end - start, start).decode("utf-8"))

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


def _parse(line: str) -> ImageRecord:
    value = json.loads(line)
    return ImageRecord(id=int(value["id"]), path=value["path"], label=value.get("label"),
                       metadata=value.get("metadata") or {}, key=value.get("key"))
