"""QueryCache: bounded LRU."""

from __future__ import annotations

import pytest
from PIL import Image

from service.query_cache import QueryCache, QueryRecord


def record() -> QueryRecord:
    return QueryRecord(Image.new("RGB", (4, 4)), None)


def test_least_recently_used_is_dropped():
    cache = QueryCache(2)
    cache.put("a", record())
    cache.put("b", record())
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", record())
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert len(cache) == 2


def test_capacity_must_be_positive():
    with pytest.raises(ValueError):
        QueryCache(0)
