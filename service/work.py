"""Work functions of the job kinds, run inside the job's own process by service.job_worker.

Signature: `work(params: dict, report: Callable[[float, str], None]) -> dict` (the job's result).
`train` and `evaluate` run the training package's functions; problems a person can fix (bad config,
missing dataset files, unreadable checkpoint) fail the job with their message alone.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.jobs import JobInputError

Report = Callable[[float, str], None]

# Progress shares of an index build: listing, embedding (most of the time), assembling + publishing.
_LISTED, _EMBEDDED = 0.05, 0.9
# Small galleries embed faster in-process than with DataLoader worker processes.
_INPROCESS_LOADING_MAX = 256


def build_index(params: dict[str, Any], report: Report) -> dict[str, Any]:
    """Build an index: params gallery, checkpoint, out, name, index_type, tokens, device."""
    import indexer

    try:
        gallery = indexer.read_gallery(params["gallery"])
    except indexer.IndexerError as error:
        raise JobInputError(str(error)) from None
    if "data_roots" in params:
        from service.paths import outside_roots

        outside = outside_roots([item.path for item in gallery.items], [Path(r) for r in params["data_roots"]])
        if outside:
            shown = ", ".join(str(path) for path in outside[:3])
            raise JobInputError(f"gallery: {len(outside)} photo(s) lie outside the data roots, e.g. {shown}")
    count = len(gallery)
    report(_LISTED, f"listed {count} photos")
    # About 20 shards, so that finished shards give a progress signal (they are the unit of resumption).
    shard_size = max(1, min(512, math.ceil(count / 20)))
    shards_total = math.ceil(count / shard_size)
    out = Path(params["out"])
    watcher = _ShardProgress(out, shards_total, report)
    watcher.start()
    try:
        built = indexer.build(
            gallery, params["checkpoint"], out, index_type=params.get("index_type"),
            tokens=params.get("tokens", "fp16"), token_bytes=int(params.get("token_bytes", 32)),
            device=params.get("device", "auto"), name=params.get("name"),
            shard_size=shard_size, num_workers=0 if count <= _INPROCESS_LOADING_MAX else None, progress=True,
        )
    except indexer.IndexerError as error:
        raise JobInputError(str(error)) from None
    finally:
        watcher.stop()
    report(_EMBEDDED, "published; the server opens it next")
    with indexer.open(built) as index:
        size, has_tokens = len(index), index.has_tokens
    return {"index_dir": str(built), "name": params.get("name") or built.name, "size": size,
            "has_tokens": has_tokens, "skipped": count - size}


class _ShardProgress:
    """Reports embedding progress from the shard files the indexer writes as it goes
    (`.<name>.work-*/shard-*.npz` next to the output): each finished shard is one step."""

    def __init__(self, out: Path, shards_total: int, report: Report, interval: float = 0.5) -> None:
        self.out = out
        self.shards_total = max(1, shards_total)
        self.report = report
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shard-progress", daemon=True)
        self._last = -1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()  # the last shards may have landed since the previous poll

    def _poll(self) -> None:
        done = sum(1 for _ in self.out.parent.glob(f".{self.out.name}.work-*/shard-*.npz"))
        if done > self._last:
            self._last = done
            fraction = min(1.0, done / self.shards_total)
            self.report(_LISTED + (_EMBEDDED - _LISTED) * fraction,
                        f"embedded {min(done, self.shards_total)}/{self.shards_total} shards")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()


def train(params: dict[str, Any], report: Report) -> dict[str, Any]:
    """Run `training.train.train` on a config validated by the route; the result is its report."""
    from models import CheckpointError
    from training.config import ConfigError, config_from_dict
    from training.datasets import DatasetError
    from training.train import TrainingError
    from training.train import train as run_training

    try:
        config = config_from_dict(params["config"], source="config")
        if params.get("device") and params["device"] != "auto":
            config = config.model_copy(update={"device": params["device"]})
        return run_training(config, progress=report)
    except (ConfigError, DatasetError, TrainingError, CheckpointError) as error:
        raise JobInputError(str(error)) from None


def evaluate(params: dict[str, Any], report: Report) -> dict[str, Any]:
    """Run `training.evaluate.evaluate`; the result is the report `sbir evaluate` writes."""
    from models import CheckpointError
    from training.datasets import DatasetError
    from training.evaluate import EvaluationError
    from training.evaluate import evaluate as run_evaluation

    try:
        return run_evaluation(
            params["checkpoint"], params["dataset"], params["root"], retrieval=params.get("retrieval", "ret"),
            shortlist=params.get("shortlist", 100), unseen=params.get("unseen"), quick=params.get("quick", False),
            device=params.get("device", "auto"), progress=report, num_workers=0,
        )
    except (DatasetError, EvaluationError, CheckpointError) as error:
        raise JobInputError(str(error)) from None
