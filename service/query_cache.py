"""A bounded, thread-safe LRU of recent queries, so /explain can reuse a search's sketch."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from PIL import Image

from service.search import Tokens


@dataclass(frozen=True)
class QueryRecord:
    """What /explain needs from a past search.

    sketch_image:  the sketch as the model saw it, RGB 224x224 (for drawing).
    sketch_tokens: [1, T, D] float32 on the CPU (GPU memory is not spent on a cache), with the
                   kept positions when token selection is on; None for models without tokens.
    """

    sketch_image: Image.Image
    sketch_tokens: Tokens | None


class QueryCache:
    """At most `capacity` QueryRecords; the least recently used one is dropped first."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._records: OrderedDict[str, QueryRecord] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, query_id: str, record: QueryRecord) -> None:
        with self._lock:
            self._records[query_id] = record
            self._records.move_to_end(query_id)
            while len(self._records) > self.capacity:
                self._records.popitem(last=False)

    def get(self, query_id: str) -> QueryRecord | None:
        with self._lock:
            record = self._records.get(query_id)
            if record is not None:
                self._records.move_to_end(query_id)
            return record

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
