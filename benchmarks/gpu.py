"""GPU readiness: every GPU path of the project run once, on whatever accelerator torch and FAISS see.

    python -m benchmarks.gpu [--model zse-tiny] [--device auto|cpu|cuda] [--out benchmarks/results/gpu.json]

Four parts, one JSON file:

1. `precision`: the ZSE model (random weights, `--model`) encodes `--batch` sketches and photos and
   scores the first sketch against the photos with `models.fast_relation.RelationScorer`, in fp32,
   under fp16 autocast and under bf16 autocast: milliseconds per batch of each stage, the scores'
   max abs difference to fp32 end to end (encoder and relation in that precision) and of the
   relation alone (fp32 tokens scored in that precision); the scores themselves, so that a reader
   can recompute the fp32 ones with `model.relation`.
2. `rerank`: re-ranking pairs/s of `RelationScorer(model, sketch_tokens [1, T, D]).score(photo_tokens
   [P, T, D])`, the service's path, timed as `benchmarks.rerank` times its `fast` variant (a scorer per
   query, `--chunk` photos a pass), in fp32 and in the service's inference dtype on the device.
3. `faiss`: a flat and an IVF index over synthetic clustered vectors, built and searched on the CPU
   (the reference) and, where `faiss.get_num_gpus() > 0`, built on the GPUs by
   `indexer.faiss_index.build_index` and searched through `indexer.faiss_index.to_gpu`; the GPU
   results against the CPU's (same ids for flat, recall for IVF).
4. `training`: `torchrun --nproc-per-node N -m service.cli train` (that is `sbir train`) of a tiny
   generated dataset of drawn shapes, stopped at step `--steps / 2`, then resumed from its last.pt to
   `--steps`; the run directory's checkpoint, report and metrics say where each run started and ended.

Without a GPU the CPU halves run (fp32 and bf16 on the CPU, pairs/s on the CPU, the CPU FAISS index,
torchrun on the CPU) and each part lists what it skipped and why under `"skipped"`. The GPU paths are
the same code as the CPU paths, chosen by `torch.cuda.is_available()` and `faiss.get_num_gpus()`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._report import finish, header, set_threads
from models.device import autocast, inference_dtype, resolve_device

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_PAIRS = {("cpu", "zse-tiny"): 256, ("cpu", "zse-vit-b16"): 16,
                 ("cuda", "zse-tiny"): 4096, ("cuda", "zse-vit-b16"): 1024}
SHAPES = ("circle", "square", "triangle", "cross", "bar", "pillar")
UNSEEN = ["bar", "pillar"]  # two held-out classes: validation refuses fewer
ID_OFFSET, ID_STRIDE = 1000, 3  # FAISS ids unlike row numbers, so a lost id mapping shows
SAMPLE_QUERIES = 8  # queries whose CPU top-k ids are written out, for checking against brute force
Skips = list[dict[str, str]]


# ----------------------------------------------------------------------------------------------
# Shared: inputs, the device's reasons, timing


def noise_images(count: int, size: int, seed: int) -> torch.Tensor:
    """[count, 3, size, size] uniform in [-1, 1) (the preprocessed range), from its own generator."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 3, size, size, generator=generator) * 2 - 1


def cuda_reason(device: torch.device) -> str | None:
    """Why the torch GPU halves cannot run here, None when they can."""
    if device.type == "cuda":
        return None
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    return "--device cpu"


def precision_reason(name: str, device: torch.device) -> str | None:
    """Why autocast to `name` is not measured on `device`, None when it is."""
    if name == "fp16" and device.type != "cuda":
        # CPU float16 autocast exists but has no fast kernels; the project uses fp16 on CUDA only.
        return f"fp16 autocast is a CUDA path: {cuda_reason(device)}"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "torch.cuda.is_bf16_supported() is False"
    return None


def synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously: a clock read without a sync times the launch, not the work.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], Any], device: torch.device, repeats: int) -> tuple[Any, list[float]]:
    """(the last result, seconds of each of `repeats` runs) after one untimed warm-up run."""
    result = run()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return result, seconds


def median_ms(seconds: Sequence[float]) -> float | None:
    return round(float(np.median(seconds)) * 1000.0, 3) if seconds else None


def build_model(name: str, seed: int, device: torch.device) -> Any:
    """The preset `name` with random weights drawn after `torch.manual_seed(seed)`, in eval mode."""
    import models

    torch.manual_seed(seed)
    return models.build_model(name, pretrained=False).eval().to(device)


# ----------------------------------------------------------------------------------------------
# 1. Precision: encode and relation scores in fp32, fp16 and bf16 autocast


def encode_and_score(model: Any, sketches: torch.Tensor, photos: torch.Tensor, device: torch.device,
                     dtype: torch.dtype | None, repeats: int) -> dict[str, Any]:
    """Encode sketches and photos [B, 3, S, S] and score sketch 0 against the B photos, under autocast
    to `dtype` (None: fp32). Returns the scores [B] (float32, CPU), the fp32-cast tokens and the
    median milliseconds per batch of each stage."""
    sketches, photos = sketches.to(device), photos.to(device)
    with torch.inference_mode(), autocast(device, dtype):
        sketch, sketch_s = timed(lambda: model.encode(sketches, modality="sketch"), device, repeats)
        photo, photo_s = timed(lambda: model.encode(photos, modality="photo"), device, repeats)
        scores, relation_s = timed(lambda: score_pairs(model, sketch.tokens[:1], photo.tokens,
                                                       _first(sketch.kept), photo.kept), device, repeats)
    return {
        "scores": scores.float().cpu(),
        "sketch": (sketch.tokens[:1].float(), _first(sketch.kept)),
        "photo": (photo.tokens.float(), photo.kept),
        "ms_per_batch": {"sketch_encode": median_ms(sketch_s), "photo_encode": median_ms(photo_s),
                         "relation": median_ms(relation_s)},
    }


def _first(kept: torch.Tensor | None) -> torch.Tensor | None:
    return None if kept is None else kept[:1]


def score_pairs(model: Any, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor,
                sketch_kept: torch.Tensor | None = None, photo_kept: torch.Tensor | None = None) -> torch.Tensor:
    """Relation scores [P] of one sketch (tokens [1, T, D]) against photo tokens [P, T, D]: the
    service's scorer, the sketch side computed once."""
    from models.fast_relation import RelationScorer

    return RelationScorer(model, sketch_tokens, sketch_kept).score(photo_tokens, photo_kept)


def relation_only(model: Any, reference: dict[str, Any], device: torch.device, dtype: torch.dtype | None
                  ) -> torch.Tensor:
    """Scores [B] of the fp32 run's tokens scored under autocast to `dtype`: the relation's own error."""
    (sketch_tokens, sketch_kept), (photo_tokens, photo_kept) = reference["sketch"], reference["photo"]
    with torch.inference_mode(), autocast(device, dtype):
        return score_pairs(model, sketch_tokens, photo_tokens, sketch_kept, photo_kept).float().cpu()


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def measure_precision(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Part 1: each precision's milliseconds per batch, scores [B] and difference to fp32."""
    model = build_model(args.model, args.seed, device)
    size = model.config.image_size
    sketches, photos = noise_images(args.batch, size, args.seed), noise_images(args.batch, size, args.seed + 1)
    skipped: Skips = []
    runs: dict[str, dict[str, Any]] = {}
    for name, dtype in PRECISIONS.items():
        reason = precision_reason(name, device)
        if reason is not None:
            skipped.append({"what": f"{name} autocast on {device.type}", "reason": reason})
            continue
        runs[name] = encode_and_score(model, sketches, photos, device, dtype, args.repeats)
    reference = runs["fp32"]
    rows = {}
    for name, run in runs.items():
        rows[name] = {
            "dtype": str(PRECISIONS[name]) if PRECISIONS[name] is not None else "torch.float32",
            "ms_per_batch": run["ms_per_batch"],
            "max_abs_diff_vs_fp32": max_abs(run["scores"], reference["scores"]),
            "relation_only_max_abs_diff_vs_fp32": max_abs(
                relation_only(model, reference, device, PRECISIONS[name]), reference["scores"]),
            # Under autocast the relation head's sigmoid comes out in 16 bits: near 0.5 a bf16 score
            # moves in steps of 1/256, so photos tie that fp32 orders. Fewer distinct scores show it.
            "distinct_scores": int(run["scores"].unique().numel()),
            "scores": [float(value) for value in run["scores"]],
        }
    report: dict[str, Any] = {
        "device": str(device), "model": model.config.name, "seed": args.seed, "batch": args.batch,
        "image_size": size, "repeats": args.repeats,
        "inputs": "benchmarks.gpu.noise_images(batch, image_size, seed) sketches, (..., seed + 1) photos; "
                  "weights drawn by models.build_model after torch.manual_seed(seed)",
        "token_shape": list(reference["photo"][0].shape[1:]),
        "precisions": rows,
        "score_range_fp32": [float(reference["scores"].min()), float(reference["scores"].max())],
    }
    report.update(cuda_matches_cpu(args, model, sketches, photos, reference, device, skipped))
    report["skipped"] = skipped
    return report


def cuda_matches_cpu(args: argparse.Namespace, model: Any, sketches: torch.Tensor, photos: torch.Tensor,
                     reference: dict[str, Any], device: torch.device, skipped: Skips) -> dict[str, Any]:
    """On CUDA, the fp32 scores against the same model's on the CPU (TF32 convolutions show here)."""
    reason = cuda_reason(device)
    if reason is not None:
        skipped.append({"what": "CUDA fp32 scores against CPU fp32", "reason": reason})
        return {}
    cpu = torch.device("cpu")
    on_cpu = encode_and_score(model.to(cpu), sketches, photos, cpu, None, 0)
    model.to(device)
    return {
        "cuda_fp32_max_abs_diff_vs_cpu_fp32": max_abs(reference["scores"], on_cpu["scores"]),
        "allow_tf32": {"cudnn": bool(torch.backends.cudnn.allow_tf32),
                       "matmul": bool(torch.backends.cuda.matmul.allow_tf32)},
    }


# ----------------------------------------------------------------------------------------------
# 2. Re-ranking pairs/s


def rerank_tokens(model: Any, pairs: int, device: torch.device, seed: int, pool: int = 16
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(sketch tokens [1, T, D], kept, photo tokens [pairs, T, D], kept) from the encoder in fp32; a pool
    of at most `pool` photos encoded once is tiled to `pairs` (the scorer's cost does not depend on
    the values)."""
    size = model.config.image_size
    images = noise_images(1 + min(pool, pairs), size, seed + 2).to(device)
    with torch.inference_mode():
        sketch = model.encode(images[:1], modality="sketch")
        photo = model.encode(images[1:], modality="photo")
    rows = torch.arange(pairs, device=device) % photo.tokens.shape[0]
    kept = None if photo.kept is None else photo.kept[rows].contiguous()
    return sketch.tokens, sketch.kept, photo.tokens[rows].contiguous(), kept


def rerank_once(model: Any, tokens: tuple[Any, ...], chunk: int) -> torch.Tensor:
    """One query, as `indexer.retrieval.relation_scores`: a scorer for the sketch, then `chunk` photos a
    pass. Returns the scores [P]."""
    from models.fast_relation import RelationScorer

    sketch_tokens, sketch_kept, photo_tokens, photo_kept = tokens
    scorer = RelationScorer(model, sketch_tokens, sketch_kept)
    parts = []
    for start in range(0, photo_tokens.shape[0], chunk):
        kept = None if photo_kept is None else photo_kept[start:start + chunk]
        parts.append(scorer.score(photo_tokens[start:start + chunk], kept))
    return torch.cat(parts)


def measure_rerank(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Part 2: pairs/s in fp32 and in the service's inference dtype (fp16 autocast on CUDA)."""
    model = build_model(args.model, args.seed, device)
    pairs = args.pairs or DEFAULT_PAIRS.get((device.type, model.config.name), 64)
    tokens = rerank_tokens(model, pairs, device, args.seed)
    skipped: Skips = []
    service_dtype = inference_dtype(device)
    runs: dict[str, torch.dtype | None] = {"fp32": None}
    if service_dtype is not None:
        runs["service_" + {torch.float16: "fp16", torch.bfloat16: "bf16"}[service_dtype]] = service_dtype
    else:
        skipped.append({"what": "fp16 autocast re-ranking (the service's CUDA inference dtype)",
                        "reason": cuda_reason(device) or "inference_dtype is None"})
    rows = {}
    scores: dict[str, torch.Tensor] = {}
    for name, dtype in runs.items():
        with torch.inference_mode(), autocast(device, dtype):
            result, seconds = timed(lambda: rerank_once(model, tokens, args.chunk), device, args.rounds)
        scores[name] = result
        rows[name] = {
            "dtype": str(dtype) if dtype is not None else "torch.float32",
            "pairs_per_s_median": round(pairs / float(np.median(seconds)), 1),
            "pairs_per_s_best": round(pairs / float(min(seconds)), 1),
            "max_abs_diff_vs_fp32": max_abs(result, scores["fp32"]),
        }
    return {"device": str(device), "model": model.config.name, "pairs": pairs, "chunk": args.chunk,
            "rounds": args.rounds, "token_shape": list(tokens[2].shape[1:]), "results": rows, "skipped": skipped}


# ----------------------------------------------------------------------------------------------
# 3. FAISS on the CPU and the GPUs


def synthetic_vectors(count: int, queries: int, dim: int, seed: int, clusters: int = 64
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors [count, dim], queries [queries, dim], both float32 L2-normalised, ids int64 [count]):
    points around `clusters` random centres, as embeddings of a gallery of classes are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))

    def around(rows: int) -> np.ndarray:
        points = centres[rng.integers(clusters, size=rows)] + 0.5 * rng.standard_normal((rows, dim))
        return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)

    vectors = around(count)
    ids = ID_OFFSET + ID_STRIDE * np.arange(count, dtype=np.int64)
    return vectors, around(queries), ids


def cpu_build(vectors: np.ndarray, ids: np.ndarray, factory: str, seed: int = 0) -> Any:
    """`indexer.faiss_index.build_index` without its GPU step (spelled out so that a GPU machine still
    has a CPU reference): the same factory, training sample and ids."""
    from indexer.faiss_index import create_index, train_sample_size

    index = create_index(factory, vectors.shape[1])
    if not index.is_trained:
        size = train_sample_size(index, len(vectors))
        rows = np.random.default_rng(seed).choice(len(vectors), size=size, replace=False)
        index.train(vectors[np.sort(rows)])
    index.add_with_ids(vectors, ids)
    return index


def search(index: Any, queries: np.ndarray, k: int, params: dict[str, int], repeats: int
           ) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """(scores [Q, k], ids [Q, k], seconds of each timed search of all Q queries) with `params` set."""
    from indexer.faiss_index import apply_search_params

    apply_search_params(index, params)
    index.search(queries, k)  # warm-up: GPU kernels load and scratch memory is allocated on first use
    seconds = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        scores, found = index.search(queries, k)
        seconds.append(time.perf_counter() - started)
    return scores, found, seconds


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found ∩ exact| / k, both [Q, k] ids."""
    hits = [len(set(row.tolist()) & set(truth.tolist())) for row, truth in zip(found, exact, strict=True)]
    return round(float(np.mean(hits)) / exact.shape[1], 4)


def faiss_reason(device: torch.device) -> str | None:
    """Why the FAISS GPU half cannot run here, None when it can."""
    import faiss

    from indexer.faiss_index import gpu_count

    if gpu_count() == 0:
        if not hasattr(faiss, "get_num_gpus"):
            return "this FAISS build has no GPU support (no faiss.get_num_gpus)"
        return "faiss.get_num_gpus() == 0"
    if device.type != "cuda":
        return "--device cpu"
    return None


def measure_faiss(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Part 3: a flat and an IVF index, CPU against GPU; CPU IVF recall against CPU flat."""
    from indexer.faiss_index import default_search_params, describe, nlist_for

    vectors, queries, ids = synthetic_vectors(args.vectors, args.queries, args.dim, args.seed)
    factories = ["Flat", f"IVF{nlist_for(args.vectors)},Flat"]
    reason = faiss_reason(device)
    rows: list[dict[str, Any]] = []
    exact: np.ndarray | None = None
    for factory in factories:
        started = time.perf_counter()
        index = cpu_build(vectors, ids, factory, args.seed)
        build_s = time.perf_counter() - started
        params = default_search_params(index)
        scores, found, seconds = search(index, queries, args.k, params, args.repeats)
        exact = found if exact is None else exact  # the flat index comes first: the exact answer
        row: dict[str, Any] = {
            "factory": factory, "description": describe(index), "search_params": params,
            "cpu": {"build_s": round(build_s, 3), "search_ms_all_queries": median_ms(seconds),
                    "recall_at_k_vs_exact": recall(found, exact)},
            "cpu_sample_ids": found[:SAMPLE_QUERIES].tolist(),
        }
        if reason is None:
            row["gpu"] = gpu_faiss(vectors, queries, ids, factory, params, index, (scores, found), exact, args)
        rows.append(row)
    skipped = [] if reason is None else [{"what": "FAISS GPU build and search", "reason": reason}]
    return {"vectors": args.vectors, "queries": args.queries, "dim": args.dim, "k": args.k, "seed": args.seed,
            "ids": f"{ID_OFFSET} + {ID_STRIDE} * row", "sample_queries": min(SAMPLE_QUERIES, args.queries),
            "inputs": "benchmarks.gpu.synthetic_vectors(vectors, queries, dim, seed)",
            "indexes": rows, "skipped": skipped}


def gpu_faiss(vectors: np.ndarray, queries: np.ndarray, ids: np.ndarray, factory: str, params: dict[str, int],
              cpu_index: Any, cpu_result: tuple[np.ndarray, np.ndarray], exact: np.ndarray,
              args: argparse.Namespace) -> dict[str, Any]:
    """The project's GPU path: `build_index` trains and fills on the GPUs (returning the CPU form) and
    `to_gpu` copies an index onto them for searching. Compared with the CPU index of the same factory."""
    from indexer.faiss_index import build_index, to_gpu

    started = time.perf_counter()
    built = build_index(vectors, ids, factory, seed=args.seed)
    build_s = time.perf_counter() - started
    on_gpu = to_gpu(built)
    if on_gpu is None:
        return {"error": f"indexer.faiss_index.to_gpu could not move {factory!r} to the GPUs"}
    scores, found, seconds = search(on_gpu, queries, args.k, params, args.repeats)
    # The CPU-built index moved as is: same centroids, so any difference is the GPU search's own.
    cpu_moved = to_gpu(cpu_index)
    same_index = {}
    if cpu_moved is not None:
        moved_scores, moved_found, _ = search(cpu_moved, queries, args.k, params, 0)
        same_index = {"same_ids_fraction": round(float(np.mean(moved_found == cpu_result[1])), 4),
                      "max_abs_score_diff": float(np.abs(moved_scores - cpu_result[0]).max())}
    return {
        "build_s": round(build_s, 3), "search_ms_all_queries": median_ms(seconds),
        "same_ids_fraction_vs_cpu": round(float(np.mean(found == cpu_result[1])), 4),
        "max_abs_score_diff_vs_cpu": float(np.abs(scores - cpu_result[0]).max()),
        "recall_at_k_vs_cpu": recall(found, cpu_result[1]),
        "recall_at_k_vs_exact": recall(found, exact),
        "cpu_built_index_searched_on_gpu": same_index,
    }


# ----------------------------------------------------------------------------------------------
# 4. torchrun training and resumption


def write_shapes_dataset(root: Path, per_class: int = 4, size: int = 64, seed: int = 0) -> Path:
    """`root/sketch/<class>/<class>_<i>.png` and `root/photo/<class>/<class>_<i>.png` (the generic layout
    of `training.datasets.load_generic`): jittered outlines on white (sketches) and filled shapes on
    light backgrounds (photos), one class per shape of `SHAPES`."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    colours = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (200, 160, 0), (150, 0, 150), (0, 150, 150)]
    for kind, name in enumerate(SHAPES):
        for number in range(per_class):
            for modality in ("sketch", "photo"):
                background = (255, 255, 255) if modality == "sketch" else tuple(int(v) for v in rng.integers(200, 256, 3))
                image = Image.new("RGB", (size, size), background)
                fill = None if modality == "sketch" else colours[kind]
                draw_shape(ImageDraw.Draw(image), kind, size, int(rng.integers(-size // 10, size // 10 + 1)), fill)
                path = root / modality / name / f"{name}_{number}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
    return root


def draw_shape(pen: Any, kind: int, size: int, shift: int, fill: tuple[int, int, int] | None) -> None:
    """Shape `kind` (index into `SHAPES`) in black outline (and `fill`) on a `size`-px canvas."""
    low, high = size // 5 + shift, size - size // 5 + shift
    middle, half = (low + high) // 2, max(2, size // 10)
    width = max(2, size // 16)
    ink = (0, 0, 0)
    if kind == 0:
        pen.ellipse([low, low, high, high], outline=ink, fill=fill, width=width)
    elif kind == 1:
        pen.rectangle([low, low, high, high], outline=ink, fill=fill, width=width)
    elif kind == 2:
        pen.polygon([(low, high), (high, high), (middle, low)], outline=ink, fill=fill, width=width)
    elif kind == 3:
        pen.line([(low, low), (high, high)], fill=fill or ink, width=width + 1)
        pen.line([(low, high), (high, low)], fill=fill or ink, width=width + 1)
    elif kind == 4:
        pen.rectangle([low, middle - half, high, middle + half], outline=ink, fill=fill, width=width)
    else:
        pen.rectangle([middle - half, low, middle + half, high], outline=ink, fill=fill, width=width)


def training_config(run_dir: Path, data_root: Path, args: argparse.Namespace, max_steps: int) -> dict[str, Any]:
    """A tiny ZSE run: `--model` at `--train-image-size` px, 2-triplet batches a process, `--steps / 2`
    steps an epoch (so the first run ends on an epoch, validated and saved), stopping at `max_steps`."""
    half = args.steps // 2
    global_batch = 2 * args.nproc  # steps an epoch = epoch_size // (batch a process x processes)
    return {
        "run_dir": str(run_dir), "seed": args.seed, "device": args.device, "progress_bar": False,
        "tensorboard": False,
        "model": {"name": args.model, "overrides": {"image_size": args.train_image_size}},
        "data": {"dataset": "generic", "root": str(data_root), "unseen": UNSEEN, "num_workers": 0},
        "optim": {"lr": 1e-4},
        "zse": {"batch_size": 2},
        "schedule": {"epochs": 2, "epoch_size": global_batch * half, "max_steps": max_steps, "log_every": 1},
        "validation": {"batch_size": 8, "quick": False},
    }


def torchrun(config: Path, resume: bool, args: argparse.Namespace) -> dict[str, Any]:
    """`torchrun --standalone --nproc-per-node N -m service.cli train --config CONFIG [--resume]` (the
    same venv's `torch.distributed.run`; --standalone takes a free port, so a concurrent run cannot
    clash on 29500). Returns the command, exit status, wall seconds and the output's tail."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
               "-m", "service.cli", "train", "--config", str(config), *(["--resume"] if resume else [])]
    environment = dict(os.environ)
    if args.threads is not None:
        environment["OMP_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.train_timeout, env=environment,
                          cwd=Path(__file__).resolve().parent.parent)
    return {"command": ["torchrun", *command[3:]], "returncode": done.returncode,
            "wall_s": round(time.perf_counter() - started, 2),
            "output_tail": None if done.returncode == 0 else (done.stdout + done.stderr)[-4000:]}


def run_facts(run_dir: Path) -> dict[str, Any]:
    """What the run directory says: the report's start and end step, the last checkpoint's step, the
    start/resume event of metrics.jsonl and the training throughput of its train records."""
    from models.checkpoint import read_state
    from training.checkpointing import checkpoint_paths

    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    begins = [event for event in events if event.get("event") in ("start", "resume")]
    last, _ = checkpoint_paths(run_dir)
    state = read_state(last)
    train_records = [event for event in events if event.get("event") == "train"]
    return {
        "status": report["status"], "start_step": report["start_step"], "step": report["step"],
        "world_size": report["world_size"], "device": report["device"],
        "last_checkpoint_step": int(state["training_state"]["step"]),
        "last_event": begins[-1], "final_loss": report["final_loss"],
        "train_s": round(report["timings"]["train_s"], 3),
        "images_per_s_median": round(float(np.median([r["images_per_s"] for r in train_records[-5:]])), 2)
        if train_records else None,
    }


def measure_training(args: argparse.Namespace, device: torch.device, work: Path) -> dict[str, Any]:
    """Part 4: torchrun to `--steps / 2`, then a resumed torchrun from its last.pt to `--steps`."""
    data_root = write_shapes_dataset(work / "shapes", size=args.train_image_size, seed=args.seed)
    run_dir = work / "run"
    runs = []
    for number, (steps, resume) in enumerate(((args.steps // 2, False), (args.steps, True))):
        config = work / f"config_{number}.json"
        config.write_text(json.dumps({**training_config(run_dir, data_root, args, steps), "resume": resume}))
        launched = torchrun(config, resume, args)
        facts = run_facts(run_dir) if launched["returncode"] == 0 else {}
        runs.append({"max_steps": steps, "resume": resume, **launched, **facts})
        if launched["returncode"] != 0:
            break
    skipped: Skips = []
    reason = cuda_reason(device)
    if reason is not None:
        skipped.append({"what": "training on CUDA (NCCL with several processes, fp16 autocast + GradScaler)",
                        "reason": reason})
    if args.nproc == 1:
        # WORLD_SIZE is 1: training.runtime.setup_runtime runs a single process without a process group.
        skipped.append({"what": "process group (gloo on the CPU, NCCL on CUDA)",
                        "reason": "--nproc 1: WORLD_SIZE is 1, so no process group is joined"})
    resumed = runs[-1] if len(runs) == 2 else {}
    return {
        "model": args.model, "image_size": args.train_image_size, "steps": args.steps, "nproc": args.nproc,
        "device_requested": args.device, "dataset": {"classes": list(SHAPES), "unseen": UNSEEN, "per_class": 4},
        "runs": runs,
        "reached_steps": resumed.get("step"), "resumed_from_step": resumed.get("start_step"),
        "ok": bool(resumed) and resumed.get("step") == args.steps and resumed.get("start_step") == args.steps // 2,
        "skipped": skipped,
    }


# ----------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="zse-tiny", help="ZSE preset, random weights (zse-tiny, zse-vit-b16)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8, help="part 1: sketches and photos a batch")
    parser.add_argument("--repeats", type=int, default=5, help="parts 1 and 3: timed repeats after a warm-up")
    parser.add_argument("--pairs", type=int, default=None,
                        help="part 2: pairs a query (default: 256 tiny / 16 b16 on CPU, 4096 / 1024 on CUDA)")
    parser.add_argument("--chunk", type=int, default=64, help="part 2: photos a pass (the service's default)")
    parser.add_argument("--rounds", type=int, default=5, help="part 2: timed queries after a warm-up")
    parser.add_argument("--vectors", type=int, default=10_000, help="part 3: vectors in the index")
    parser.add_argument("--queries", type=int, default=100, help="part 3: queries searched at once")
    parser.add_argument("--dim", type=int, default=768, help="part 3: vector dimension (ViT-B/16's)")
    parser.add_argument("--k", type=int, default=10, help="part 3: neighbours a query")
    parser.add_argument("--steps", type=int, default=20, help="part 4: training steps, stopped and resumed at half")
    parser.add_argument("--nproc", type=int, default=1, help="part 4: torchrun --nproc-per-node")
    parser.add_argument("--train-image-size", type=int, default=64, help="part 4: training image size")
    parser.add_argument("--train-timeout", type=float, default=600.0, help="part 4: seconds a torchrun may take")
    parser.add_argument("--parts", default="precision,rerank,faiss,training", help="parts to run, comma-separated")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where part 4 writes (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    args = parser.parse_args(argv)
    if args.steps < 2 or args.steps % 2:
        parser.error("--steps must be an even number of at least 2 (the first run stops at half)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = header("gpu", argv)
    report["torch_threads"] = set_threads(args.threads)
    device = resolve_device(args.device)
    report["device"] = str(device)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    measures: dict[str, Callable[[argparse.Namespace, torch.device], dict[str, Any]]] = {
        "precision": measure_precision, "rerank": measure_rerank, "faiss": measure_faiss}
    for part in parts:
        started = time.perf_counter()
        if part == "training":
            report[part] = training_part(args, device)
        else:
            report[part] = measures[part](args, device)
        report[part]["wall_s"] = round(time.perf_counter() - started, 2)
        print(summary(part, report[part]))
    report["skipped"] = [{"part": part, **entry} for part in parts for entry in report[part]["skipped"]]
    finish(report, args.out)
    print(f"wrote {args.out}")
    failed = "training" in parts and not report["training"]["ok"]
    return 1 if failed else 0


def training_part(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        return measure_training(args, device, args.work_dir)
    with tempfile.TemporaryDirectory(prefix="sbir-gpu-bench-") as folder:
        return measure_training(args, device, Path(folder))


def summary(part: str, result: dict[str, Any]) -> str:
    """One line per part for the terminal."""
    skipped = f"; skipped {len(result['skipped'])}" if result["skipped"] else ""
    if part == "precision":
        rows = result["precisions"]
        text = ", ".join(f"{name} relation {row['ms_per_batch']['relation']} ms |diff| "
                         f"{row['max_abs_diff_vs_fp32']:.1e}" for name, row in rows.items())
    elif part == "rerank":
        text = ", ".join(f"{name} {row['pairs_per_s_median']:.0f} pairs/s" for name, row in result["results"].items())
    elif part == "faiss":
        text = ", ".join(f"{row['factory']} recall {row['cpu']['recall_at_k_vs_exact']}"
                         + (f" gpu same ids {row['gpu'].get('same_ids_fraction_vs_cpu')}" if "gpu" in row else "")
                         for row in result["indexes"])
    else:
        text = f"reached step {result['reached_steps']}, resumed from {result['resumed_from_step']}, ok {result['ok']}"
    return f"{part} ({result['wall_s']} s): {text}{skipped}"


if __name__ == "__main__":
    raise SystemExit(main())
