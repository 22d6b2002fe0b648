"""Zero-shot evaluation of a checkpoint: embed once, score, rank, measure, write a JSON report.

Three ways to rank the photos (gallery) for each sketch (query):

- ``ret``: L2 distance between L2-normalised retrieval vectors (the ZSE [Ret] token, the AMFF
  feature), as the reference's "sa" mode: ``d = ||s - p|| = sqrt(2 - 2 s.p)``.
- ``rn``: the relation network's score for every sketch-photo pair (ZSE only), the paper's RN
  numbers. One sketch's tokens are broadcast against a batch of photo tokens; they are never
  copied per pair.
- ``two-stage``: what the service does. An exact inner-product FAISS index over the photo vectors
  gives each sketch a shortlist of K photos; the relation network re-ranks the shortlist; the other
  photos follow, in ANN-score order. With K = gallery size this is the same ranking as ``rn``
  (the shortlist is scored in gallery order and in the same chunks, so the scores are bit-identical).

Photos are embedded once and kept (vectors on the CPU, tokens on the scoring device); sketches are
embedded batch by batch, scored against all photos, and turned into per-query metrics at once, so
no [Q, G] matrix is ever held (QuickDraw's is 92,291 x 54,151).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from indexer import retrieval as retrieval_path
from models.atomic import finite_or_none, write_json_atomic
from models.device import autocast, inference_dtype
from models.errors import SbirError
from models.rerank_mode import EXACT, Reranking, RerankMode
from training.data import (
    ImageDataset,
    Modality,
    instance_relevance_available,
    load_split,
    with_full_gallery,
)
from training.datasets import Sample, SplitData, held_out_problem
from training.metrics import per_query_metrics, rank_by_distances, relevance_from_labels

Retrieval = Literal["ret", "rn", "two-stage"]
RETRIEVALS: tuple[str, ...] = ("ret", "rn", "two-stage")
Progress = Callable[[float, str], None]

FINE_GRAINED_DATASETS = frozenset({"qmul-chair", "qmul-shoe"})
METRIC_STYLES = {
    "metrics": "reference: as the ZSE-SBIR code computes them (VOC AP with the precision envelope; "
    "Prec@K over the first min(K, #relevant) ranks), comparable with the papers",
    "metrics_standard": "standard: non-interpolated AP; Prec@K = relevant in the top K / K",
}
# Photos left out of a two-stage shortlist get distances above every relation distance (-score, in (-1, 0)).
_OUTSIDE_SHORTLIST = 2.0
# Embedding in-process is faster than starting worker processes for a few hundred images.
_INPROCESS_IMAGES = 256
# Photo embedding's share of the progress bar (sketch embedding and scoring take the rest).
_PHOTO_SHARE = 0.1


class EvaluationError(SbirError, ValueError):
    """Arguments that cannot be evaluated (e.g. relation retrieval with a model that has no relation net)."""


# ----------------------------------------------------------------------------------------------
# Devices and encoding


@dataclass
class Embeddings:
    """Encoded images of one modality.

    ret: [N, D] float32 on the CPU, L2-normalised.
    tokens: [N, T, D] on the scoring device (float16 on CUDA, float32 on the CPU), or None.
    kept: [N, m] grid positions of the tokens kept by token selection (None: all kept).
    """

    ret: torch.Tensor
    tokens: torch.Tensor | None = None
    kept: torch.Tensor | None = None


def _loader(
    dataset: ImageDataset, batch_size: int, num_workers: int | None, device: torch.device
) -> DataLoader:
    if num_workers is None:
        num_workers = 0 if len(dataset) <= _INPROCESS_IMAGES else min(4, os.cpu_count() or 1)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        # Its own generator: creating the iterator must not draw from torch's global RNG, which a
        # training run saves and restores for exact resumption.
        generator=torch.Generator(),
    )


def iter_encoded(
    model: nn.Module,
    samples: Sequence[Sample],
    modality: Modality,
    *,
    batch_size: int,
    device: torch.device,
    keep_tokens: bool,
    amp: bool = True,
    num_workers: int | None = None,
    bf16: bool = False,
) -> Iterator[tuple[torch.Tensor, Embeddings]]:
    """Yield ``(positions [b] int64, Embeddings of the batch)`` in sample order, under no_grad
    (``bf16``: in bfloat16 autocast, as the server embeds sketches in its bf16 re-ranking mode)."""
    token_dtype = torch.float16 if device.type == "cuda" and amp else torch.float32
    image_size = getattr(getattr(model, "config", None), "image_size", 224)
    loader = _loader(ImageDataset(samples, modality, image_size), batch_size, num_workers, device)
    with torch.no_grad():
        for images, positions in loader:
            with autocast(device, torch.bfloat16 if bf16 else inference_dtype(device, amp)):
                encoded = model.encode(images.to(device, non_blocking=True), modality)  # type: ignore[operator]
            tokens = encoded.tokens.to(token_dtype) if keep_tokens and encoded.tokens is not None else None
            yield (
                positions,
                Embeddings(encoded.ret.float().cpu(), tokens, encoded.kept if keep_tokens else None),
            )


def embed(
    model: nn.Module,
    samples: Sequence[Sample],
    modality: Modality,
    *,
    batch_size: int = 32,
    device: torch.device,
    keep_tokens: bool = False,
    amp: bool = True,
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    bf16: bool = False,
) -> Embeddings:
    """Encode all ``samples``: ret [N, D] (CPU); with ``keep_tokens``, tokens [N, T, D] on ``device``
    (``bf16``: under bfloat16 autocast)."""
    rets, tokens, kept = [], [], []
    for positions, batch in iter_encoded(
        model,
        samples,
        modality,
        batch_size=batch_size,
        device=device,
        keep_tokens=keep_tokens,
        amp=amp,
        num_workers=num_workers,
        bf16=bf16,
    ):
        rets.append(batch.ret)
        if batch.tokens is not None:
            tokens.append(batch.tokens)
        if batch.kept is not None:
            kept.append(batch.kept)
        if progress is not None:
            progress(len(positions))
    dim = getattr(model, "embed_dim", 0)
    return Embeddings(
        ret=torch.cat(rets) if rets else torch.empty(0, dim),
        tokens=torch.cat(tokens) if tokens else None,
        kept=torch.cat(kept) if kept else None,
    )


# ----------------------------------------------------------------------------------------------
# Scoring


@dataclass
class PairCount:
    """Relation-network pair evaluations used, against an exhaustive evaluation's Q x G."""

    evaluated: int = 0
    exhaustive: int = 0

    def to_dict(self) -> dict[str, Any]:
        fraction = self.evaluated / self.exhaustive if self.exhaustive else 0.0
        return {"evaluated": self.evaluated, "exhaustive": self.exhaustive, "fraction": fraction}


def ret_distances(sketch_ret: torch.Tensor, photo_ret: torch.Tensor) -> torch.Tensor:
    """L2 distances of L2-normalised vectors: [Q, D], [G, D] -> [Q, G] = sqrt(max(0, 2 - 2 s.p))."""
    return (2.0 - 2.0 * sketch_ret @ photo_ret.T).clamp_min(0.0).sqrt()


class Scorer:
    """Distances of sketches to every photo for one retrieval mode (lower is closer).

    ``distances(sketches)`` -> [b, G] float32 numpy, for :func:`training.metrics.per_query_metrics`.
    The photos are an ``indexer.retrieval.EmbeddedGallery``: two-stage retrieval takes its shortlist
    from the same FAISS index type and re-ranks it with the same functions as the service's search.
    """

    def __init__(
        self,
        model: nn.Module,
        photos: Embeddings,
        retrieval: Retrieval,
        *,
        shortlist: int = 100,
        chunk_size: int = 256,
        amp: bool = True,
        reranking: Reranking = EXACT,
        ann_weight: float = 0.0,
    ) -> None:
        self.model = model
        self.ann_weight = ann_weight
        self.reranking = reranking
        self.photos = photos
        self.retrieval = retrieval
        self.gallery = photos.ret.shape[0]
        self.shortlist = min(shortlist, self.gallery)
        self.chunk_size = chunk_size
        self.amp = amp
        self.pairs = PairCount()
        # [Ret] retrieval ranks by the dense product below; only relation retrieval needs the gallery.
        self.index = (retrieval_path.EmbeddedGallery(photos.ret, photos.tokens, photos.kept)
                      if retrieval != "ret" else None)

    def _relation_row(self, sketches: Embeddings, row: int, ids: np.ndarray) -> torch.Tensor:
        assert sketches.tokens is not None and self.photos.tokens is not None
        sketch_kept = None if sketches.kept is None else sketches.kept[row : row + 1]
        sketch = retrieval_path.Tokens(sketches.tokens[row : row + 1], sketch_kept)
        device = self.photos.tokens.device
        scores = retrieval_path.relation_scores(self.model, self.index, sketch, ids, self.chunk_size, device,
                                                self.amp, self.reranking)
        self.pairs.evaluated += len(scores)
        return torch.from_numpy(scores)

    def distances(self, sketches: Embeddings) -> np.ndarray:
        count = sketches.ret.shape[0]
        self.pairs.exhaustive += count * self.gallery
        if self.retrieval == "ret":
            return ret_distances(sketches.ret, self.photos.ret).numpy()
        if self.retrieval == "rn":
            everything = np.arange(self.gallery)
            inner = (sketches.ret @ self.photos.ret.T).numpy()  # [b, G]
            rows = [-retrieval_path.ranking_scores(self._relation_row(sketches, row, everything).numpy(),
                                                   inner[row], self.ann_weight) for row in range(count)]
            return np.stack(rows) if rows else np.empty((0, self.gallery), np.float32)
        # two-stage: everything outside the shortlist after it, by inner product (what the ANN returns);
        # shortlisted distances are at most ann_weight (relation in (0, 1), cosine >= -1).
        outside = _OUTSIDE_SHORTLIST + self.ann_weight + (1.0 - sketches.ret @ self.photos.ret.T)  # [b, G]
        distances = outside.numpy()
        for row, candidates in enumerate(retrieval_path.shortlists(self.index, sketches.ret.numpy(), self.shortlist)):
            # Gallery order, so that K = G scores exactly the chunks the exhaustive path scores.
            order = np.argsort(candidates.ids)
            shortlisted = candidates.ids[order]
            relation = self._relation_row(sketches, row, shortlisted).numpy()
            distances[row, shortlisted] = -retrieval_path.ranking_scores(relation, candidates.ann_scores[order],
                                                                         self.ann_weight)
        return distances


# ----------------------------------------------------------------------------------------------
# Metrics over sketch batches


@dataclass
class _MetricAccumulator:
    """Per-query metric values collected batch by batch, averaged like ``retrieval_metrics``."""

    style: Literal["reference", "standard"]
    fine_grained: bool
    values: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def add(self, distances: np.ndarray, relevant: np.ndarray, order: np.ndarray | None = None) -> None:
        """order: ``rank_by_distances(distances)``, shared by the accumulators of one batch."""
        metrics = per_query_metrics(distances, relevant, self.style, self.fine_grained, order=order)
        for key, per_query in metrics.items():
            self.values.setdefault(key, []).append(per_query)

    def means(self) -> dict[str, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN -> NaN, as retrieval_metrics
            return {key: float(np.nanmean(np.concatenate(parts))) for key, parts in self.values.items()}


def _instance_relevance(pairs: Sequence[int], positions: np.ndarray, gallery: int) -> np.ndarray:
    """[b, G] bool: sketch -> its own photo (rows of unpaired sketches stay empty, so they score NaN)."""
    relevant = np.zeros((len(positions), gallery), dtype=bool)
    for row, position in enumerate(positions):
        photo = pairs[int(position)]
        if photo >= 0:
            relevant[row, photo] = True
    return relevant


def evaluate_model(
    model: nn.Module,
    split: SplitData,
    *,
    retrieval: Retrieval = "ret",
    shortlist: int = 100,
    fine_grained: bool = False,
    instance: bool = False,
    batch_size: int = 32,
    device: torch.device,
    amp: bool = True,
    num_workers: int | None = None,
    relation_chunk: int = 256,
    progress: Progress | None = None,
    rerank_mode: str = "fp32",
    ann_weight: float = 0.0,
) -> dict[str, Any]:
    """Evaluate an already loaded model on a split (also used for validation during training).

    Args:
        fine_grained: relevance is "same label" and acc@1 / acc@10 are added (QMUL: a label is a photo).
        instance: also measure each sketch against its own photo (``split.pairs``): acc@1 / acc@10
            among all photos, reported in ``metrics`` and in full as ``metrics_instance``.

    Returns:
        ``{"metrics", "metrics_standard"[, "metrics_instance"], "pairs", "timings"}``.
    """
    if retrieval not in RETRIEVALS:
        raise EvaluationError(f"retrieval must be one of {', '.join(RETRIEVALS)}, got {retrieval!r}")
    if retrieval != "ret" and not retrieval_path.can_rerank(model):
        raise EvaluationError(
            f"retrieval {retrieval!r} needs a relation network; {getattr(model, 'family', '?')} models "
            "have none (use 'ret')"
        )
    if not split.sketches or not split.photos:
        raise EvaluationError(
            f"nothing to evaluate: {len(split.sketches)} sketches, {len(split.photos)} photos"
        )
    if shortlist < 1:
        raise EvaluationError(f"shortlist must be at least 1, got {shortlist}")
    if not ann_weight >= 0:
        raise EvaluationError(f"ann_weight must be at least 0, got {ann_weight}")
    if instance and split.pairs is None:
        raise EvaluationError("instance metrics need sketch-photo pairs")
    was_training = model.training
    model.eval()
    keep_tokens = retrieval != "ret"
    done = 0

    def advance(count: int, share: float, total: int, what: str) -> None:
        nonlocal done
        done += count
        if progress is not None:
            start = 0.0 if what == "photos" else _PHOTO_SHARE
            progress(start + share * min(1.0, done / max(1, total)), f"{what}: {done}/{total}")

    timings: dict[str, float] = {}
    try:
        started = time.perf_counter()
        photos = embed(
            model,
            split.photos,
            "photo",
            batch_size=batch_size,
            device=device,
            keep_tokens=keep_tokens,
            amp=amp,
            num_workers=num_workers,
            progress=lambda n: advance(n, _PHOTO_SHARE, len(split.photos), "photos"),
        )
        timings["embed_photos_s"] = time.perf_counter() - started
        done = 0
        reranking = Reranking.prepare(model, RerankMode.parse(rerank_mode))
        scorer = Scorer(model, photos, retrieval, shortlist=shortlist, chunk_size=relation_chunk, amp=amp,
                        reranking=reranking, ann_weight=ann_weight)
        accumulators = {style: _MetricAccumulator(style, fine_grained) for style in ("reference", "standard")}
        instance_accumulator = _MetricAccumulator("reference", True)
        photo_labels = np.array([sample.label for sample in split.photos])
        sketch_labels = np.array([sample.label for sample in split.sketches])
        timings.update(embed_sketches_s=0.0, scoring_s=0.0, metrics_s=0.0)
        clock = time.perf_counter()
        for positions, sketches in iter_encoded(
            model,
            split.sketches,
            "sketch",
            batch_size=batch_size,
            device=device,
            keep_tokens=keep_tokens,
            amp=amp,
            num_workers=num_workers,
            bf16=reranking.mode.precision == "bf16",
        ):
            now = time.perf_counter()
            timings["embed_sketches_s"] += now - clock
            distances = scorer.distances(sketches)
            clock = time.perf_counter()
            timings["scoring_s"] += clock - now
            positions_np = positions.numpy()
            relevant = relevance_from_labels(sketch_labels[positions_np], photo_labels)
            order = rank_by_distances(distances)  # one sort for every style and relevance below
            for accumulator in accumulators.values():
                accumulator.add(distances, relevant, order)
            if instance:
                assert split.pairs is not None
                instance_accumulator.add(
                    distances, _instance_relevance(split.pairs, positions_np, len(split.photos)), order
                )
            now = time.perf_counter()
            timings["metrics_s"] += now - clock
            clock = now
            advance(len(positions), 1.0 - _PHOTO_SHARE, len(split.sketches), "sketches")
    finally:
        model.train(was_training)

    result: dict[str, Any] = {
        "metrics": accumulators["reference"].means(),
        "metrics_standard": accumulators["standard"].means(),
    }
    if instance:
        instance_metrics = instance_accumulator.means()
        result["metrics_instance"] = instance_metrics
        for key in ("acc_1", "acc_10"):  # acc@K does not depend on the AP style
            result["metrics"][key] = instance_metrics[key]
            result["metrics_standard"][key] = instance_metrics[key]
    result["pairs"] = scorer.pairs.to_dict()
    result["timings"] = timings
    return result


# ----------------------------------------------------------------------------------------------
# The command's function


def evaluate(
    checkpoint: str | os.PathLike[str],
    dataset: str,
    root: str | os.PathLike[str],
    retrieval: Retrieval = "ret",
    shortlist: int = 100,
    unseen: str | os.PathLike[str] | Sequence[str] | None = None,
    quick: bool = False,
    batch_size: int = 32,
    device: str = "auto",
    progress: Progress | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    amp: bool = True,
    num_workers: int | None = None,
    relation_chunk: int = 256,
    gallery: Literal["unseen", "all"] = "unseen",
    pair_by_stem: bool = False,
    allow_small_split: bool = False,
    rerank_mode: str = "fp32",
    ann_weight: float = 0.0,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the zero-shot (unseen) part of ``dataset``; return (and write) the report.

    ``gallery="all"`` ranks every photo of the dataset (seen classes too) for each unseen sketch, as a
    user of such a gallery would search it (:func:`training.data.with_full_gallery`).

    Args:
        checkpoint: this project's checkpoint or a reference ``best_checkpoint.pth``.
        dataset: see :func:`training.data.load_split` (``qmul-chair`` / ``qmul-shoe``: fine-grained;
            ``openmoji-demo``: category-level plus each sketch against its own photo).
        retrieval: ``ret``, ``rn`` or ``two-stage`` (see the module docstring).
        shortlist: K of the two-stage path (clamped to the gallery size).
        rerank_mode: how relation scores are computed (``models.rerank_mode``: fp32, bf16, int8,
            bf16+cascadeM, prescoreM, ...), as the server's ``SBIR_RERANK_MODE``.
        ann_weight: rn / two-stage rank by relation + ann_weight * [Ret] cosine
            (``indexer.retrieval.ranking_scores``), as the server's ``SBIR_ANN_WEIGHT``; 0 is the paper's rule.
        unseen: generic / openmoji-demo: the unseen classes (a list, a file with one name a line, or a
            string naming no file, read as comma-separated names).
        quick: the reference's subsampled quick test.
        pair_by_stem: generic: pair each sketch with the photo of its class of the same file stem, and
            also measure each sketch against its own photo (acc@1, acc@10).
        allow_small_split: evaluate even when fewer than 2 classes are held out or a held-out class
            has no photo (refused by default: with one class mAP is 1.0 whatever the model does).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``...
        progress: called with (fraction done in [0, 1], message).
        out: write the report there as JSON (atomically: a temporary file renamed into place).
        amp: half-precision autocast on CUDA, as the reference evaluates (ignored on the CPU).

    Returns:
        The report: ``config``, ``checkpoint_sha256``, ``model``, ``dataset`` (sizes and
        ``held_out_classes``), ``warnings``, ``metrics`` (reference
        style: ``map_all``, ``map_200``, ``prec_100``, ``prec_200``, and ``acc_1``, ``acc_10`` for
        fine-grained / instance data), ``metrics_standard``, ``metric_styles``, ``pairs`` and
        ``pair_fraction`` (relation-network pair evaluations against Q x G), ``timings``.
        NaN metrics (no query had a relevant photo) are ``None``.

    Raises:
        models.CheckpointError, training.datasets.DatasetError, EvaluationError.
    """
    import models

    total_started = time.perf_counter()
    if retrieval not in RETRIEVALS:
        raise EvaluationError(f"retrieval must be one of {', '.join(RETRIEVALS)}, got {retrieval!r}")
    started = time.perf_counter()
    loaded = models.load(checkpoint, device)
    model, torch_device, sha256 = loaded.model, loaded.device, loaded.sha256
    if retrieval != "ret" and not retrieval_path.can_rerank(model):
        raise EvaluationError(
            f"retrieval {retrieval!r} needs a relation network; AMFF models have none (use 'ret')"
        )
    load_model_s = time.perf_counter() - started
    started = time.perf_counter()
    split = load_split(dataset, root, "zero", unseen=unseen, quick=quick, pair_by_stem=pair_by_stem)
    held_out = list(split.classes)
    problem = held_out_problem(split)
    if problem is not None and not allow_small_split:
        raise EvaluationError(f"{problem} (--unseen), or pass --allow-small-split to evaluate anyway")
    if gallery == "all":
        split = with_full_gallery(
            split, load_split(dataset, root, "train", unseen=unseen, pair_by_stem=pair_by_stem)
        )
    elif gallery != "unseen":
        raise EvaluationError(f"gallery must be 'unseen' or 'all', got {gallery!r}")
    load_data_s = time.perf_counter() - started
    instance = instance_relevance_available(dataset, split) and dataset not in FINE_GRAINED_DATASETS
    result = evaluate_model(
        model,
        split,
        retrieval=retrieval,
        shortlist=shortlist,
        rerank_mode=rerank_mode,
        ann_weight=ann_weight,
        fine_grained=dataset in FINE_GRAINED_DATASETS,
        instance=instance,
        batch_size=batch_size,
        device=torch_device,
        amp=amp,
        num_workers=num_workers,
        relation_chunk=relation_chunk,
        progress=progress,
    )
    timings = {"load_model_s": load_model_s, "load_data_s": load_data_s, **result["timings"]}
    timings["total_s"] = time.perf_counter() - total_started
    pairs = result["pairs"]
    if pairs["evaluated"] and timings["scoring_s"] > 0:
        timings["ms_per_pair"] = 1000.0 * timings["scoring_s"] / pairs["evaluated"]
    unseen_value = (
        [str(u) for u in unseen]
        if isinstance(unseen, list | tuple)
        else (None if unseen is None else str(unseen))
    )
    report: dict[str, Any] = {
        "config": {
            "checkpoint": str(checkpoint),
            "dataset": dataset,
            "root": str(root),
            "retrieval": retrieval,
            "shortlist": scorer_shortlist(retrieval, shortlist, len(split.photos)),
            "rerank_mode": RerankMode.parse(rerank_mode).label,
            "ann_weight": ann_weight,
            "unseen": unseen_value,
            "quick": quick,
            "gallery": gallery,
            "pair_by_stem": pair_by_stem,
            "allow_small_split": allow_small_split,
            "batch_size": batch_size,
            "device": str(torch_device),
            "precision": "float16 autocast" if amp and torch_device.type == "cuda" else "float32",
        },
        "checkpoint_sha256": sha256,
        "model": {"family": getattr(model, "family", None), "name": getattr(model.config, "name", None)},
        "dataset": {
            "name": dataset,
            "sketches": len(split.sketches),
            "photos": len(split.photos),
            "classes": len(split.classes),
            "missing_files": split.missing.count if split.missing else 0,
            "held_out_classes": held_out,
            "level": "fine-grained"
            if dataset in FINE_GRAINED_DATASETS
            else ("category + instance" if instance else "category"),
        },
        "metrics": result["metrics"],
        "metrics_standard": result["metrics_standard"],
        "metric_styles": METRIC_STYLES,
        "pairs": pairs,
        "pair_fraction": pairs["fraction"] if retrieval != "ret" else None,
        "timings": timings,
        "warnings": [f"--allow-small-split: {problem}; these figures mean little"] if problem else [],
    }
    if "metrics_instance" in result:
        report["metrics_instance"] = result["metrics_instance"]
    report = finite_or_none(report)
    if out is not None:
        write_json_atomic(out, report, sort_keys=False)
    return report


def scorer_shortlist(retrieval: str, shortlist: int, gallery: int) -> int | None:
    """The shortlist size actually used (None outside two-stage)."""
    return min(shortlist, gallery) if retrieval == "two-stage" else None

