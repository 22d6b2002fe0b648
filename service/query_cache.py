"""Bounded, thread-safe LRUs: recent queries, so /explain can reuse a search's sketch, and recent
explanations (service.engine)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from PIL import Image

from indexer.retrieval import Tokens


@dataclass(frozen=True)
class QueryRecord:
    """What /explain needs from a past search.

    sketch_image:  the sketch as the model saw it, RGB 224x224 (for drawing).
    sketch_tokens: [1, T, D] float32 on the CPU (GPU memory is not spent on a cache), with the
                   kept positions when token selection is on; None for models without tokens.
    """

    sketch_image: Image.Image
    sketch_tokens: Tokens | None


K = TypeVar("K")
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """At most `capacity` values; the least recently used one is dropped first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._records: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._records[key] = value
            self._records.move_to_end(key)
            while len(self._records) > self.capacity:
                self._records.popitem(last=False)

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._records.get(key)
            if value is not None:
                self._records.move_to_end(key)
            return value

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)


class QueryCache(LRUCache[str, QueryRecord]):
    """At most `capacity` QueryRecords, keyed by query id."""
