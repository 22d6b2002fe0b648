"""The search engine: owns the loaded model and the index being served, and runs model work.

Concurrency: model and index calls run under one lock (`compute_lock`), so requests served from
FastAPI's thread pool never run the model concurrently. Index swaps are atomic: a request takes a
lease on the current index for its whole duration; a swap installs the new index for later
requests and closes the old one only when its last lease ends.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from indexer.errors import IndexMismatchError
from indexer.manifest import manifest_signature
from models.errors import SbirError
from service.active_index import recorded_active
from service.errors import NotFoundError, NotReadyError, NotSupportedError
from service.query_cache import LRUCache, QueryCache, QueryRecord
from service.settings import Settings
from service.uploads import require_ink

if TYPE_CHECKING:  # torch is imported only when something is loaded
    from models.interface import LoadedModel

logger = logging.getLogger("service.engine")

EXPLANATION_CACHE_SIZE = 8


class _IndexSlot:
    """An index plus the number of requests using it; closed once retired and unused."""

    def __init__(self, index: Any, generation: int, signature: tuple[int, ...] | None) -> None:
        self.index = index
        self.generation = generation  # which swap installed it: keys of per-index caches
        self.signature = signature  # its manifest file as opened: a republished index has another
        self.users = 0
        self.retired = False

    def close_if_idle(self) -> None:
        if self.retired and self.users == 0:
            try:
                self.index.close()
            except Exception:  # a failing close must not fail the request that happened to be last
                logger.exception("closing index %s failed", getattr(self.index, "name", "?"))


@dataclass(frozen=True)
class Lease:
    """What one request works with: the model and the index current when it started."""

    model: LoadedModel
    index: Any
    generation: int  # of the index: changes with every swap


@dataclass
class SearchHit:
    image_id: int
    ann_score: float
    relation_score: float | None
    score: float  # what the results are ordered by (indexer.retrieval.ranking_scores; the ANN score unranked)


@dataclass
class SearchOutcome:
    query_id: str
    hits: list[SearchHit]
    reranked: bool
    shortlist_size: int
    index_name: str
    index_size: int
    records: dict[int, Any]  # image_id -> ImageRecord, read while the lease was held
    timings_ms: dict[str, float] = field(default_factory=dict)
    paths: dict[int, str] = field(default_factory=dict)  # image_id -> path relative to its gallery root


class SearchEngine:
    """Model + index being served, loaded once and swapped atomically."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queries = QueryCache(settings.query_cache_size)
        # The page asks for each explanation twice (JSON for the list, then the PNG): the second is
        # served from here. Keys start with the index generation, so a swap never serves stale ones.
        self.explanations: LRUCache[tuple[Any, ...], Any] = LRUCache(EXPLANATION_CACHE_SIZE)
        self._generations = itertools.count()
        self.compute_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._reranking: Any = None  # models.rerank_mode.Reranking of the loaded model
        self._slot: _IndexSlot | None = None
        self._load_error: str | None = None
        self._loaded = threading.Event()
        # Called with the exception when `load` fails (sbir serve stops: the error is permanent).
        self.on_load_error: Callable[[BaseException], None] | None = None
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watch_failure: tuple[tuple[int, ...] | None, str] | None = None

    # Loading -------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the configured checkpoint, then the index to serve (blocking): the one recorded in
        `<index root>/active-index.json` when the server swapped one in through the API under the
        same settings (`service.active_index`), else the configured one. A failure is kept as the
        reason /readyz gives, logged, and passed to `on_load_error`; it does not raise."""
        try:
            if self.settings.checkpoint is not None:
                self.load_model(self.settings.checkpoint)
            directory = self.settings.index_dir
            recorded = recorded_active(self.settings.build_root(), directory)
            if recorded is not None and self.model is not None:
                try:
                    self.swap_index(self.open_index(recorded))
                    logger.info("serving %s, the index last activated through the API", recorded)
                    directory = None
                except Exception as error:  # fall back to the configured index, saying why
                    logger.warning("cannot serve the recorded active index %s (%s); serving %s", recorded,
                                   str(error).splitlines()[0] if str(error) else type(error).__name__, directory)
            if directory is not None:
                try:
                    self.swap_index(self.open_index(directory))
                except IndexMismatchError as error:
                    raise IndexMismatchError(self._mismatch(directory, error)) from None
        except Exception as error:  # any load problem: stay up (healthz) and say why (readyz)
            if isinstance(error, SbirError):  # a one-line user error (a file that does not fit): no traceback
                logger.error("loading the model or index failed: %s", error)
            else:
                logger.exception("loading the model or index failed")
            reason = f"{type(error).__name__}: {error}"
            with self._state_lock:
                self._load_error = reason
            if self.on_load_error is not None:
                self.on_load_error(error)
        finally:
            self._loaded.set()

    def _mismatch(self, directory: Path, error: Exception) -> str:
        """One line naming the served checkpoint and the index, and what the index was built with."""
        from indexer.manifest import read_manifest

        model = self.model
        mine = f" (sha256 {model.sha256[:12]})" if model is not None else ""
        try:
            built = read_manifest(Path(directory)).get("model") or {}
            theirs = f"{built.get('checkpoint_path') or 'another checkpoint'} (sha256 {built['checkpoint_sha256'][:12]})"
        except Exception:  # the manifest could not say: the indexer's own words
            theirs = f"another checkpoint ({error})"
        return f"the checkpoint {self.settings.checkpoint}{mine} does not match the index {directory}, built with {theirs}"

    def start_loading(self) -> threading.Thread:
        """Load in a background thread so the server answers /healthz while it loads."""
        thread = threading.Thread(target=self.load, name="sbir-engine-load", daemon=True)
        thread.start()
        return thread

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded.wait(timeout)

    def load_model(self, checkpoint: Path) -> LoadedModel:
        import models
        from models.device import configure_threads
        from models.rerank_mode import Reranking, RerankMode
        from models.types import CheckpointError

        started = time.perf_counter()
        threads = configure_threads(self.settings.torch_threads)
        loaded = models.load(checkpoint, self.settings.device)
        device = loaded.device
        try:
            reranking = Reranking.prepare(loaded.model, RerankMode.parse(self.settings.rerank_mode))
        except CheckpointError as error:  # the mode asks for a part this checkpoint lacks
            raise CheckpointError(f"{checkpoint}: {error}") from None
        slow = reranking.mode.slow_here(device)
        if slow:  # a setting that works but costs more than it saves on this machine
            logger.warning("%s", slow)
        with self._state_lock:
            self._model = loaded
            self._reranking = reranking
        logger.info("loaded %s (%s) on %s in %.1fs; re-ranking %s, %d torch threads", loaded.name, loaded.family,
                    device, time.perf_counter() - started, reranking.mode.label, threads)
        return loaded

    def open_index(self, directory: Path) -> Any:
        """Open an index directory checked against the loaded checkpoint (IndexMismatchError otherwise)."""
        import indexer

        model = self.model
        if model is None:
            raise RuntimeError("no model is loaded, so no index can be checked against it")
        return indexer.open(directory, checkpoint_hash=model.sha256)

    def swap_index(self, index: Any) -> None:
        """Serve `index` from now on; the previous one closes when its in-flight requests end."""
        signature = getattr(index, "manifest_signature", None)  # a stand-in index has none
        with self._state_lock:
            previous, self._slot = self._slot, _IndexSlot(index, next(self._generations), signature)
            self.explanations.clear()  # entries of older generations could never be asked for again
            if previous is not None:
                previous.retired = True
                previous.close_if_idle()
        logger.info("now serving index %s (%d photos)", getattr(index, "name", "?"), len(index))

    @property
    def index_directory(self) -> Path | None:
        """The directory of the index being served, or None."""
        with self._state_lock:
            directory = None if self._slot is None else getattr(self._slot.index, "directory", None)
            return None if directory is None else Path(directory)

    # Reloading -----------------------------------------------------------------------------

    def start_watching(self, interval: float) -> threading.Thread | None:
        """Poll the served index's manifest every `interval` seconds and serve the directory anew
        when it changes (`sbir index add` or a rebuild republishes it); None when `interval` <= 0."""
        if interval <= 0 or self._watcher is not None:
            return None
        self._watcher = threading.Thread(target=self._watch, args=(interval,), name="sbir-index-watch", daemon=True)
        self._watcher.start()
        return self._watcher

    def _watch(self, interval: float) -> None:
        while not self._watch_stop.wait(interval):
            try:
                self.reload_if_changed()
            except Exception:  # never let the watcher die: the next tick tries again
                logger.exception("checking the served index for changes failed")

    def reload_if_changed(self) -> bool:
        """Open and swap in the served directory when its manifest changed since it was opened; True
        when it did. A republished index that cannot be served (another checkpoint, unreadable)
        is logged once and the old one stays."""
        with self._state_lock:
            slot = self._slot
        if slot is None or self.model is None:
            return False
        raw_directory = getattr(slot.index, "directory", None)
        if raw_directory is None:
            return False  # not an index directory (a stand-in): nothing to watch
        directory = Path(raw_directory)
        current = manifest_signature(directory)
        if current is None or current == slot.signature:
            return False  # mid-publish (no manifest for a moment) or unchanged
        if slot.signature is None:  # swapped in without `open_index`: its state now is the baseline
            slot.signature = current
            return False
        try:
            index = self.open_index(directory)
        except Exception as error:
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            if self._watch_failure != (current, message):
                self._watch_failure = (current, message)
                logger.error("index %s changed but cannot be served (still serving the previous one): %s",
                             directory, message)
            return False
        with self._state_lock:
            stale = self._slot is not slot  # swapped by someone else meanwhile: theirs stands
        if stale:
            index.close()
            return False
        self.swap_index(index)
        logger.info("reloaded index %s: it was republished (%d photos now)", directory, len(index))
        return True

    def close(self) -> None:
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        with self._state_lock:
            if self._slot is not None:
                self._slot.retired = True
                self._slot.close_if_idle()
                self._slot = None

    # State ---------------------------------------------------------------------------------

    @property
    def model(self) -> LoadedModel | None:
        with self._state_lock:
            return self._model

    def index_summary(self) -> tuple[str, int] | None:
        """(name, size) of the index being served, or None."""
        with self._state_lock:
            if self._slot is None:
                return None
            return str(self._slot.index.name), len(self._slot.index)

    def not_ready_reasons(self) -> list[str]:
        """Why searches cannot be served yet; empty when ready."""
        with self._state_lock:
            if not self._loaded.is_set():
                return ["loading the model and index"]
            if self._load_error is not None:
                return [f"loading failed: {self._load_error}"]
            reasons = []
            if self._model is None:
                reasons.append("no checkpoint is configured (SBIR_CHECKPOINT)")
            if self._slot is None:
                reasons.append("no index is loaded; build one with POST /index/build")
            return reasons

    def ensure_ready(self) -> None:
        """NotReadyError unless both a model and an index are loaded."""
        with self._state_lock:
            ready = self._slot is not None and self._model is not None
        if not ready:
            raise self._not_ready_error()

    def _not_ready_error(self) -> NotReadyError:
        reasons = self.not_ready_reasons() or ["the model or index is not loaded"]
        return NotReadyError("not_ready", "; ".join(reasons))

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        """The model and current index for one request; NotReadyError when either is missing."""
        with self._state_lock:
            slot, model = self._slot, self._model
            if slot is None or model is None:
                slot = None
            else:
                slot.users += 1
        if slot is None or model is None:
            raise self._not_ready_error()
        try:
            yield Lease(model, slot.index, slot.generation)
        finally:
            with self._state_lock:
                slot.users -= 1
                slot.close_if_idle()

    # Work ----------------------------------------------------------------------------------

    def search(self, sketch_image: Image.Image, *, k: int, shortlist: int, rerank: bool | None) -> SearchOutcome:
        """Rank the gallery for one decoded sketch.

        rerank None: re-rank when the model has a relation network. The shortlist is raised to k
        when smaller, so re-ranking can always fill k results. Blocking: call from a worker thread.
        """
        from indexer import retrieval as stages
        from models import preprocess

        timings: dict[str, float] = {}
        with self.lease() as lease:
            model = lease.model
            use_relation = stages.can_rerank(model.model) if rerank is None else rerank
            if use_relation and not stages.can_rerank(model.model):
                raise NotSupportedError("rerank_unavailable",
                                        f"rerank=true needs a model with a relation network; {model.name} has none")

            started = time.perf_counter()
            require_ink(sketch_image)
            sketch_tensor = preprocess.sketch(sketch_image)
            embedding = self._embed(model, sketch_tensor)
            timings["embed"] = _elapsed_ms(started)

            started = time.perf_counter()
            candidates = max(shortlist, k) if use_relation else k
            with self.compute_lock:
                short = stages.shortlist(lease.index, embedding.ret, candidates)
            timings["ann"] = _elapsed_ms(started)

            started = time.perf_counter()
            if use_relation and len(short.ids) and embedding.tokens is not None:
                with self.compute_lock:
                    relation = stages.relation_scores(model.model, lease.index, embedding.tokens, short.ids,
                                                      self.settings.rerank_batch_size, model.device,
                                                      amp=self.settings.autocast, reranking=self._reranking)
                score = stages.ranking_scores(relation, short.ann_scores, self.settings.ann_weight)
                order = stages.order_by_relation(score)[:k]
                hits = [SearchHit(int(short.ids[i]), float(short.ann_scores[i]), float(relation[i]), float(score[i]))
                        for i in order]
            else:
                hits = [SearchHit(int(i), float(s), None, float(s)) for i, s in zip(short.ids[:k], short.ann_scores[:k],
                                                                                    strict=True)]
            timings["rerank"] = _elapsed_ms(started) if use_relation else 0.0

            records = {hit.image_id: lease.index.record(hit.image_id) for hit in hits}
            paths = {image_id: gallery_path(lease.index, record) for image_id, record in records.items()}
            query_id = uuid.uuid4().hex
            self.queries.put(query_id, QueryRecord(preprocess.to_image(sketch_tensor), embedding.tokens))
            return SearchOutcome(query_id=query_id, hits=hits, reranked=use_relation, shortlist_size=len(short.ids),
                                 index_name=str(lease.index.name), index_size=len(lease.index), records=records,
                                 timings_ms=timings, paths=paths)

    def _embed(self, model: LoadedModel, sketch_tensor: Any) -> Any:
        """One preprocessed sketch [3, H, W] -> SketchEmbedding.

        Searches are not batched: request batching measured no gain on a CPU (0.86-1.07x requests/s,
        benchmarks/RESULTS.md), where re-ranking dominates a search, so it was removed.
        """
        from indexer import retrieval as stages

        with self.compute_lock:
            return stages.embed_sketch(model.model, sketch_tensor, model.device, self.settings.autocast,
                                       self._reranking)


def lookup_record(index: Any, image_id: int) -> Any:
    """The index's ImageRecord for `image_id`; NotFoundError for ids the index does not hold."""
    try:
        return index.record(image_id)
    except (KeyError, IndexError) as error:
        raise NotFoundError("unknown_image", f"image {image_id} is not in index {index.name!r}") from error


def gallery_path(index: Any, record: Any) -> str:
    """`record.path` relative to the root of the gallery its id was added from (the manifest's
    `galleries` entries, one per build or add); a photo outside that root (a manifest naming files
    elsewhere) keeps its absolute path."""
    path = Path(record.path)
    for gallery in getattr(index, "manifest", {}).get("galleries") or ():  # a stand-in index may have none
        first, last, root = gallery.get("first_id"), gallery.get("last_id"), gallery.get("root")
        if root is None or first is None or last is None or not int(first) <= int(record.id) <= int(last):
            continue
        return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
    return str(path)


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000.0, 3)
