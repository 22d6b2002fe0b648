"""Dynamic batching: the batcher's grouping and errors, and batched sketch embedding in the engine."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import models
from indexer import retrieval as stages
from models import preprocess
from service.batching import DynamicBatcher
from service.main import create_app
from tests.support.api import running, search
from tests.support.images import sketch_png

# Long enough that concurrent submissions always meet in one batch; a full batch does not wait for it.
LONG_WAIT_S = 30.0


def test_concurrent_items_form_one_batch_with_results_in_order() -> None:
    seen: list[list[int]] = []
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        lambda context, items: (seen.append(list(items)), [context * item for item in items])[1],
        max_batch=4, max_wait_s=LONG_WAIT_S)
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda item: batcher.submit("model", 10, item), [1, 2, 3, 4]))
    finally:
        batcher.close()
    assert results == [10, 20, 30, 40]
    assert len(seen) == 1 and sorted(seen[0]) == [1, 2, 3, 4]
    assert batcher.stats.batches == 1 and batcher.stats.largest == 4


def test_batches_hold_at_most_max_batch_items_of_one_key() -> None:
    release = threading.Event()
    seen: list[tuple[str, list[int]]] = []

    def run(context: str, items: list[int]) -> list[int]:
        release.wait(10)
        seen.append((context, list(items)))
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, max_batch=2, max_wait_s=0.0)
    try:
        blocker = batcher.submit_async("a", "a", 0)  # occupies the worker while the rest queue up
        futures = [batcher.submit_async(key, key, item) for key, item in
                   [("a", 1), ("b", 2), ("a", 3), ("a", 4), ("b", 5)]]
        release.set()
        assert [future.result(10) for future in futures] == [1, 2, 3, 4, 5]
        assert blocker.result(10) == 0
    finally:
        batcher.close()
    for context, items in seen:
        assert len(items) <= 2
        assert all((item in (2, 5)) == (context == "b") for item in items)
    assert sorted(item for _, items in seen for item in items) == [0, 1, 2, 3, 4, 5]


def test_items_queued_while_the_lock_is_busy_join_one_batch() -> None:
    lock = threading.Lock()
    batcher: DynamicBatcher[int, int] = DynamicBatcher(lambda context, items: list(items), max_batch=8,
                                                       max_wait_s=0.0, lock=lock)
    try:
        with lock:  # the model is busy with other work (another request's re-ranking)
            futures = [batcher.submit_async("k", None, item) for item in range(3)]
            assert not any(future.done() for future in futures)
        assert [future.result(10) for future in futures] == [0, 1, 2]
    finally:
        batcher.close()
    assert batcher.stats.batches == 1 and batcher.stats.largest == 3


def test_a_failing_batch_raises_in_every_caller_and_the_batcher_keeps_working() -> None:
    def run(context: object, items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("bad item")
        return list(items)

    batcher: DynamicBatcher[int, int] = DynamicBatcher(run, max_batch=2, max_wait_s=LONG_WAIT_S)
    try:
        futures = [batcher.submit_async("k", None, item) for item in (13, 1)]
        for future in futures:
            with pytest.raises(ValueError, match="bad item"):
                future.result(10)
        later = [batcher.submit_async("k", None, item) for item in (7, 8)]
        assert [future.result(10) for future in later] == [7, 8]
    finally:
        batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit("k", None, 1)


def test_a_lone_item_runs_once_the_wait_bound_passes() -> None:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(lambda context, items: list(items), max_batch=8,
                                                       max_wait_s=0.01)
    try:
        assert batcher.submit("k", None, 5) == 5
    finally:
        batcher.close()
    assert batcher.stats.largest == 1


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        DynamicBatcher(lambda context, items: items, max_batch=0, max_wait_s=0.0)
    with pytest.raises(ValueError):
        DynamicBatcher(lambda context, items: items, max_batch=1, max_wait_s=-1.0)


def _sketch_tensor(kind: str) -> torch.Tensor:
    return preprocess.sketch(Image.open(io.BytesIO(sketch_png(kind))))


def test_embedding_a_batch_equals_embedding_each_sketch_alone(workspace) -> None:
    model = models.load_checkpoint(workspace.checkpoint).eval()
    tensors = [_sketch_tensor(kind) for kind in ("circle", "square", "circle")]
    batched = stages.embed_sketches(model, torch.stack(tensors), torch.device("cpu"))
    for tensor, together in zip(tensors, batched, strict=True):
        alone = stages.embed_sketch(model, tensor, torch.device("cpu"))
        np.testing.assert_allclose(together.ret, alone.ret, atol=1e-5)
        assert together.tokens is not None and alone.tokens is not None
        assert together.tokens.tokens.shape == alone.tokens.tokens.shape == (1, *model.token_shape)
        torch.testing.assert_close(together.tokens.tokens, alone.tokens.tokens, atol=1e-5, rtol=0)


def test_concurrent_searches_are_embedded_together_with_the_results_of_unbatched_search(make_settings) -> None:
    kinds = ["circle", "square", "circle", "square"]
    unbatched_app = create_app(make_settings(batching=False))
    with running(unbatched_app) as client:
        expected = [search(client, sketch_png(kind), k=5, shortlist=8).json() for kind in kinds]
    # The longest wait the settings allow; the batch runs as soon as all four are in.
    app = create_app(make_settings(batching=True, batch_max_size=len(kinds), batch_wait_ms=1000.0))
    with running(app) as client:
        with ThreadPoolExecutor(len(kinds)) as pool:
            responses = list(pool.map(lambda kind: search(client, sketch_png(kind), k=5, shortlist=8), kinds))
        stats = app.state.engine.batcher.stats
    # Requests reach the batcher through the server's thread pool; on a loaded machine one may come
    # after the wait bound, so only "some were embedded together" is certain.
    assert stats.items == len(kinds) and stats.largest >= 2
    for response, reference in zip(responses, expected, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert [r["image_id"] for r in body["results"]] == [r["image_id"] for r in reference["results"]]
        for got, want in zip(body["results"], reference["results"], strict=True):
            assert got["relation_score"] == pytest.approx(want["relation_score"], abs=1e-4)
