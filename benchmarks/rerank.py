"""Relation re-ranking throughput (pairs/s): the fast path against a straightforward implementation.

    python -m benchmarks.rerank [--checkpoint CKPT | --models zse-tiny,zse-vit-b16] [--pairs 256,16]

The straightforward implementation (`naive_relation`, written here) is how the reference evaluates:
the sketch tokens are repeated once per pair, each cross-attention layer projects q, k and v of every
pair, attention is an explicit matmul-softmax-matmul, the post-norm is the mean / unbiased-std formula,
all in float32. The variants timed in the same run, interleaved round by round, on the same tokens:

- `naive`: the above;
- `model`: `ZSEModel.relation` as committed (one sketch broadcast, scaled_dot_product_attention);
- `fast`: `models.fast_relation.RelationScorer`, the service's path (sketch side once per query, photo
  side per chunk);
- `fast_prepared`: the same with the photo side prepared once (an exhaustive evaluation's situation,
  where every photo meets many sketches; not the service's, so not in the headline);
- `fast_compiled` (with `--compile`): `fast` under `torch.compile`;
- `fast_bf16` (with `--bf16`): `fast` under CPU bfloat16 autocast: faster where the CPU has bf16
  instructions, but not the same scores (its difference is reported; never the headline).

Scores are checked against `naive` (max abs difference) and the fast kernel against `model.kernel`.
Tokens come from the model's own encoder on noise images (post-norm statistics, as real tokens).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks._report import finish, header, set_threads
from models.device import autocast
from models.fast_relation import PROJECTION_SOURCES

DEFAULT_PAIRS = {"zse-tiny": 256, "zse-vit-b16": 16}


# ----------------------------------------------------------------------------------------------
# The straightforward implementation


def _naive_norm(x: torch.Tensor, norm: Any) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    std = x.std(-1, keepdim=True)
    return norm.weight * (x - mean) / (std + norm.eps) + norm.bias


def _naive_layer(layer: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 residual: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """One post-norm cross-attention layer, every input [P, T, D] (nothing shared between pairs)."""
    pairs, count, dim = query.shape
    heads = layer.heads
    head_dim = dim // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(pairs, -1, heads, head_dim).transpose(1, 2)

    q, k, v = split(layer.q_proj(query)), split(layer.k_proj(key)), split(layer.v_proj(value))
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(head_dim)  # [P, H, T, T]
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], -1e9)
    attended = torch.matmul(torch.softmax(scores, dim=-1), v)
    attended = attended.transpose(1, 2).contiguous().view(pairs, count, dim)
    x = _naive_norm(residual + layer.out_proj(attended), layer.norm1)
    return _naive_norm(x + layer.fc2(F.relu(layer.fc1(x))), layer.norm2)


def naive_relation(model: Any, sketch_tokens: torch.Tensor, photo_tokens: torch.Tensor,
                   sketch_kept: torch.Tensor | None = None, photo_kept: torch.Tensor | None = None) -> torch.Tensor:
    """Relation scores [P]: sketch_tokens [1, T', D] repeated for each of photo_tokens [P, T', D]."""
    pairs = photo_tokens.shape[0]
    sketch, sketch_mask = model._full_grid(sketch_tokens, sketch_kept)
    photo, photo_mask = model._full_grid(photo_tokens, photo_kept)
    sketch = sketch.repeat(pairs, 1, 1)
    if sketch_mask is not None:
        sketch_mask = sketch_mask.repeat(pairs, 1)
    inputs = {"sketch": sketch, "photo": photo}
    sources = PROJECTION_SOURCES[model.cross.form]
    sketch_layer, photo_layer = model.cross.sketch_layer, model.cross.photo_layer
    q, k, v = (inputs[source] for source in sources["sketch_layer"])
    sketch_out = _naive_layer(sketch_layer, q, k, v, sketch, photo_mask)
    q, k, v = (inputs[source] for source in sources["photo_layer"])
    photo_out = _naive_layer(photo_layer, q, k, v, photo, sketch_mask)
    sketch_anchors, photo_anchors = model.anchors(sketch_out), model.anchors(photo_out)
    dots = sketch_anchors @ photo_anchors.transpose(-2, -1)
    kernel = dots / sketch_anchors.norm(dim=-1).unsqueeze(-1) / photo_anchors.norm(dim=-1).unsqueeze(-2)
    kernel = torch.nan_to_num(kernel, nan=0.0, posinf=0.0, neginf=0.0)
    return model.relation_head(kernel)


# ----------------------------------------------------------------------------------------------
# Timing


def model_tokens(model: Any, pairs: int, pool: int = 16) -> tuple[Any, Any]:
    """(sketch Encoded [1], photo tokens and kept [pairs]) from the encoder on noise images; the photo
    pool (at most `pool` images, encoded once) is tiled to `pairs`."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(1 + min(pool, pairs), 3, 224, 224, generator=generator) * 2 - 1
    with torch.inference_mode():
        sketch = model.encode(images[:1], modality="sketch")
        photos = model.encode(images[1:], modality="photo")
    rows = torch.arange(pairs) % photos.tokens.shape[0]
    kept = None if photos.kept is None else photos.kept[rows]
    return sketch, (photos.tokens[rows].contiguous(), kept)


def chunked(score: Callable[[torch.Tensor, Any], torch.Tensor], tokens: torch.Tensor, kept: Any,
            chunk: int) -> torch.Tensor:
    parts = []
    for start in range(0, tokens.shape[0], chunk):
        parts.append(score(tokens[start:start + chunk], None if kept is None else kept[start:start + chunk]))
    return torch.cat(parts)


def variants(model: Any, sketch: Any, chunks: Sequence[int], compile_fast: bool, bf16: bool = False
             ) -> dict[str, tuple[str, int, Callable[[torch.Tensor, Any], torch.Tensor]]]:
    """name -> (variant, chunk, run(photo_tokens, photo_kept) -> scores [P]); each run starts a query."""
    from models.fast_relation import RelationScorer, prepare_photos

    found: dict[str, tuple[str, int, Callable[[torch.Tensor, Any], torch.Tensor]]] = {}
    compiled_score: Any = None
    for chunk in chunks:
        def naive(tokens: torch.Tensor, kept: Any, chunk: int = chunk) -> torch.Tensor:
            return chunked(lambda t, k: naive_relation(model, sketch.tokens, t, sketch.kept, k), tokens, kept, chunk)

        def committed(tokens: torch.Tensor, kept: Any, chunk: int = chunk) -> torch.Tensor:
            return chunked(lambda t, k: model.relation(sketch.tokens, t, sketch.kept, k), tokens, kept, chunk)

        def fast(tokens: torch.Tensor, kept: Any, chunk: int = chunk) -> torch.Tensor:
            scorer = RelationScorer(model, sketch.tokens, sketch.kept)  # per query, as the service
            return chunked(scorer.score, tokens, kept, chunk)

        found[f"naive/{chunk}"] = ("naive", chunk, naive)
        found[f"model/{chunk}"] = ("model", chunk, committed)
        found[f"fast/{chunk}"] = ("fast", chunk, fast)
        if compile_fast:
            if compiled_score is None:
                compiled_score = torch.compile(RelationScorer.score, dynamic=False)

            def fast_compiled(tokens: torch.Tensor, kept: Any, chunk: int = chunk,
                              compiled: Any = compiled_score) -> torch.Tensor:
                scorer = RelationScorer(model, sketch.tokens, sketch.kept)
                return chunked(lambda t, k: compiled(scorer, t, k), tokens, kept, chunk)

            found[f"fast_compiled/{chunk}"] = ("fast_compiled", chunk, fast_compiled)

    if bf16:
        def fast_bf16(tokens: torch.Tensor, kept: Any, chunk: int = max(chunks)) -> torch.Tensor:
            with autocast(torch.device("cpu"), torch.bfloat16):
                scorer = RelationScorer(model, sketch.tokens, sketch.kept)
                return chunked(scorer.score, tokens, kept, chunk)

        found[f"fast_bf16/{max(chunks)}"] = ("fast_bf16", max(chunks), fast_bf16)

    scorer = RelationScorer(model, sketch.tokens, sketch.kept)
    prepared_cache: dict[int, list[Any]] = {}

    def fast_prepared(tokens: torch.Tensor, kept: Any, chunk: int = max(chunks)) -> torch.Tensor:
        if chunk not in prepared_cache:  # prepared once, outside the timing's first round
            prepared_cache[chunk] = [
                prepare_photos(model, tokens[s:s + chunk], None if kept is None else kept[s:s + chunk])
                for s in range(0, tokens.shape[0], chunk)
            ]
        return torch.cat([scorer.score(prepared) for prepared in prepared_cache[chunk]])

    found[f"fast_prepared/{max(chunks)}"] = ("fast_prepared", max(chunks), fast_prepared)
    return found


def measure_model(model: Any, pairs: int, chunks: Sequence[int], rounds: int, compile_fast: bool,
                  bf16: bool = False) -> dict[str, Any]:
    chunks = sorted({min(chunk, pairs) for chunk in chunks})  # a chunk larger than the pairs is one pass
    sketch, (tokens, kept) = model_tokens(model, pairs)
    with torch.inference_mode():
        runs = variants(model, sketch, chunks, compile_fast, bf16)
        times: dict[str, list[float]] = {name: [] for name in runs}
        reference = runs[f"naive/{chunks[0]}"][2](tokens, kept)
        checks = {}
        for name, (_, _, run) in runs.items():  # also the warm-up (and compilation) of every variant
            checks[name] = float((run(tokens, kept) - reference).abs().max())
        from models.fast_relation import RelationScorer

        sample = slice(0, min(chunks[0], pairs))
        sample_kept = None if kept is None else kept[sample]
        kernel_fast = RelationScorer(model, sketch.tokens, sketch.kept).kernel(tokens[sample], sample_kept)
        kernel_model = model.kernel(sketch.tokens, tokens[sample], sketch.kept, sample_kept)
        kernel_difference = float((kernel_fast - kernel_model).abs().max())
        for _ in range(rounds):  # interleaved, so that a busy spell of the machine hits every variant
            for name, (_, _, run) in runs.items():
                started = time.perf_counter()
                run(tokens, kept)
                times[name].append(time.perf_counter() - started)
    rows: list[dict[str, Any]] = []
    for name, (variant, chunk, _) in runs.items():
        seconds = np.asarray(times[name])
        rows.append({
            "variant": variant, "chunk": chunk, "pairs": pairs, "rounds": rounds,
            "pairs_per_s_median": round(pairs / float(np.median(seconds)), 1),
            "pairs_per_s_best": round(pairs / float(seconds.min()), 1),
            "max_abs_diff_vs_naive": checks[name],
        })
    best = {variant: max((r for r in rows if r["variant"] == variant), key=lambda r: r["pairs_per_s_median"])
            for variant in {r["variant"] for r in rows}}
    same_chunk = {r["chunk"]: r for r in rows if r["variant"] == "naive"}
    return {
        "model": model.config.name,
        "token_shape": list(tokens.shape[1:]),
        "keep_rates": [model.config.keep_rate_sketch, model.config.keep_rate_photo],
        "cross_form": model.config.cross_form,
        "score_range": [float(reference.min()), float(reference.max())],
        "kernel_max_abs_diff_fast_vs_model": kernel_difference,
        "results": rows,
        "best": {variant: {"chunk": r["chunk"], "pairs_per_s_median": r["pairs_per_s_median"]}
                 for variant, r in best.items()},
        # Headline: the service's path against the straightforward one, each at its best chunk size.
        "speedup_fast_vs_naive_best_chunks": round(best["fast"]["pairs_per_s_median"]
                                                   / best["naive"]["pairs_per_s_median"], 2),
        "speedup_fast_vs_naive_same_chunk": {
            str(r["chunk"]): round(r["pairs_per_s_median"] / same_chunk[r["chunk"]]["pairs_per_s_median"], 2)
            for r in rows if r["variant"] == "fast"
        },
        "speedup_model_vs_naive_best_chunks": round(best["model"]["pairs_per_s_median"]
                                                    / best["naive"]["pairs_per_s_median"], 2),
    }


def load_models(args: argparse.Namespace) -> list[Any]:
    import models

    if args.checkpoint is not None:
        return [models.load(args.checkpoint, "cpu").model]
    torch.manual_seed(0)
    return [models.build_model(name).eval() for name in args.models.split(",") if name.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rerank", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="a ZSE checkpoint (default: --models, random)")
    parser.add_argument("--models", default="zse-tiny,zse-vit-b16", help="presets when no checkpoint is given")
    parser.add_argument("--pairs", default=None,
                        help="pairs scored per round, one number or one per model (default: 256 tiny, 16 b16)")
    parser.add_argument("--chunks", default="16,64", help="photos per forward pass, comma-separated")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    parser.add_argument("--bf16", action="store_true",
                        help="also time the fast path under CPU bfloat16 autocast (not fp32-identical)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/rerank.json"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = header("rerank", argv)
    report["torch_threads"] = set_threads(args.threads)
    chunks = [int(value) for value in args.chunks.split(",")]
    loaded = load_models(args)
    pairs_arg = [int(value) for value in args.pairs.split(",")] if args.pairs else None
    report["models"] = []
    for number, model in enumerate(loaded):
        pairs = (pairs_arg[min(number, len(pairs_arg) - 1)] if pairs_arg
                 else DEFAULT_PAIRS.get(model.config.name, 32))
        result = measure_model(model, pairs, chunks, args.rounds, args.compile, args.bf16)
        report["models"].append(result)
        print(f"{result['model']}: fast {result['best']['fast']['pairs_per_s_median']:.0f} pairs/s "
              f"(chunk {result['best']['fast']['chunk']}), naive {result['best']['naive']['pairs_per_s_median']:.0f} "
              f"(chunk {result['best']['naive']['chunk']}): x{result['speedup_fast_vs_naive_best_chunks']}; "
              f"max |diff| {max(r['max_abs_diff_vs_naive'] for r in result['results']):.2e}")
    report["checkpoint"] = None if args.checkpoint is None else str(args.checkpoint)
    finish(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
