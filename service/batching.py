"""Dynamic batching: concurrent calls for the same key become one batched call.

The search service uses it to embed the sketches of concurrent requests in one forward pass. A
worker thread takes the oldest waiting item, then gathers more items of the same key until the batch
is full or `max_wait_s` has passed since that oldest item arrived. Items that arrived while the
previous batch was running are taken at once, so under load batches form without waiting; a lone
request waits at most `max_wait_s`. With a `lock` (the engine's model lock), the batch is gathered
only once the lock is held: requests that arrive while the model is busy with other work (re-ranking)
join the next forward pass instead of each waiting for the model on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

logger = logging.getLogger("service.batching")

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Pending(Generic[Item, Result]):
    key: Any
    context: Any
    item: Item
    arrived: float
    future: Future[Result] = field(default_factory=Future)


@dataclass
class BatchStats:
    """Counters for tests and metrics: batches run and items they held."""

    batches: int = 0
    items: int = 0
    largest: int = 0


class DynamicBatcher(Generic[Item, Result]):
    """Run `run_batch(context, items) -> results` (same length, same order) over concurrent `submit`s.

    Items are batched only with items of an equal `key`; `context` is the first item's (the caller
    passes e.g. the loaded model as context and its identity as key). An exception raised by
    `run_batch` is raised in every caller of that batch. `lock`, when given, is held while a batch is
    gathered and run (`run_batch` must not take it again).
    """

    def __init__(
        self,
        run_batch: Callable[[Any, Sequence[Item]], Sequence[Result]],
        *,
        max_batch: int,
        max_wait_s: float,
        lock: AbstractContextManager[Any] | None = None,
        name: str = "sbir-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        self._run_batch = run_batch
        self._lock: AbstractContextManager[Any] = lock if lock is not None else nullcontext()
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._queue: deque[_Pending[Item, Result]] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    def submit(self, key: Hashable, context: Any, item: Item) -> Result:
        """Queue `item` and block until its batch has run; returns its result."""
        return self.submit_async(key, context, item).result()

    def submit_async(self, key: Hashable, context: Any, item: Item) -> Future[Result]:
        pending: _Pending[Item, Result] = _Pending(key, context, item, time.monotonic())
        with self._condition:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(pending)
            self._condition.notify_all()
        return pending.future

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop taking items; items already queued still run."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    def _wait_for_item(self) -> bool:
        """Block until an item is queued (True) or the batcher is closed and drained (False)."""
        with self._condition:
            while not self._queue:
                if self._closed:
                    return False
                self._condition.wait()
            return True

    def _take_batch(self) -> list[_Pending[Item, Result]]:
        """The next batch: the oldest item and more of its key, within the wait bound."""
        with self._condition:
            first = self._queue[0]
            deadline = first.arrived + self.max_wait_s
            while True:
                batch = [pending for pending in self._queue if pending.key == first.key][: self.max_batch]
                remaining = deadline - time.monotonic()
                if len(batch) >= self.max_batch or remaining <= 0 or self._closed:
                    break
                self._condition.wait(remaining)
            for pending in batch:
                self._queue.remove(pending)
            return batch

    def _loop(self) -> None:
        while self._wait_for_item():
            with self._lock:
                self._run(self._take_batch())

    def _run(self, batch: list[_Pending[Item, Result]]) -> None:
        # A caller may have given up (cancelled); the rest still get their results.
        live = [pending for pending in batch if pending.future.set_running_or_notify_cancel()]
        if not live:
            return
        self.stats.batches += 1
        self.stats.items += len(live)
        self.stats.largest = max(self.stats.largest, len(live))
        try:
            results = self._run_batch(live[0].context, [pending.item for pending in live])
            if len(results) != len(live):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(live)} items")
        except BaseException as error:  # every waiting caller must hear about the failure
            logger.debug("batch of %d failed: %s", len(live), error)
            for pending in live:
                pending.future.set_exception(error)
            return
        for pending, result in zip(live, results, strict=True):
            pending.future.set_result(result)
