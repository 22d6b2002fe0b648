"""Re-ranking modes side by side: speed, query latency and agreement with exact mode (issue 16).

    python -m benchmarks.fast_modes --checkpoint weights/zse-openmoji-demo.pt --data data/demo \\
        --index data/indexes/openmoji-demo [--modes fp32,bf16,int8,bf16+cascade20,int8+cascade20]

Three parts, each over the same modes (``models.rerank_mode``), all in one run:

- **pairs**: relation scores of one sketch against ``--pairs`` photos through the service's
  function (``indexer.retrieval.relation_scores``, the sketch side once per query), per mode and
  chunk size, against the reference's way of scoring (``benchmarks.rerank.naive_relation``: the
  sketch tokens repeated per pair, matmul attention, float32). Interleaved rounds, medians. Models:
  the checkpoint (the demo's zse-tiny) and a randomly initialised ViT-B/16 (``--large``; the cost
  does not depend on the weights). The max score difference of fp32 to the reference is the
  exactness check.
- **query**: p50 of a whole search through ``SearchEngine.search`` (decode, embed, ANN, re-rank K):
  on the built demo index with the OpenMoji line drawings, and on a synthetic ViT-B/16 gallery
  (``benchmarks.search_latency.SyntheticIndex``) with generated sketches.
- **agreement**: on the demo split, every unseen line drawing against all gallery photos, the [Ret]
  shortlist of K re-ranked in each mode: top-10 overlap with fp32 (|top10 & top10_fp32| / 10, mean
  over queries), category mAP@all (reference style) and its change, instance acc@1.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._report import finish, header, percentiles_ms, set_threads

DEFAULT_MODES = "fp32,bf16,int8,bf16+cascade20,int8+cascade20"


def _large_config(preset: str, modes: Sequence[str]) -> Any:
    """The random-weight model's config: with a pre-scorer when a prescore mode is measured (its
    cost does not depend on its weights either)."""
    import dataclasses

    from models.config import ZSE_PRESETS
    from models.rerank_mode import RerankMode

    config = ZSE_PRESETS[preset]
    wants = any(RerankMode.parse(mode).prescore for mode in modes)
    return dataclasses.replace(config, prescorer=True) if wants else config


def _reranking(model: Any, mode: str) -> Any:
    from models.rerank_mode import Reranking, RerankMode

    return Reranking.prepare(model, RerankMode.parse(mode))


# ----------------------------------------------------------------------------------------------
# pairs/s


def measure_pairs(model: Any, modes: Sequence[str], pairs: int, chunks: Sequence[int], rounds: int
                  ) -> dict[str, Any]:
    """pairs/s of each mode and of the reference's way at each chunk size; score differences."""
    from benchmarks.rerank import chunked, model_tokens, naive_relation
    from indexer.retrieval import EmbeddedGallery, Tokens, relation_scores

    sketch, (tokens, kept) = model_tokens(model, pairs)
    ret = torch.nn.functional.normalize(torch.randn(pairs, model.embed_dim, generator=torch.Generator().manual_seed(0)),
                                        dim=1)
    gallery = EmbeddedGallery(ret, tokens, kept)
    ids = np.arange(pairs)
    cpu = torch.device("cpu")
    sketch_tokens = Tokens(sketch.tokens, sketch.kept)
    runs: dict[tuple[str, int], Any] = {}
    for chunk in chunks:
        runs[("reference", chunk)] = lambda chunk=chunk: chunked(
            lambda t, k: naive_relation(model, sketch.tokens, t, sketch.kept, k), tokens, kept, chunk).numpy()
        for mode in modes:
            reranking = _reranking(model, mode)
            runs[(mode, chunk)] = lambda chunk=chunk, reranking=reranking: relation_scores(
                model, gallery, sketch_tokens, ids, chunk, cpu, False, reranking)
    with torch.inference_mode():
        outputs = {key: np.asarray(run(), dtype=np.float32) for key, run in runs.items()}  # also the warm-up
        times: dict[tuple[str, int], list[float]] = {key: [] for key in runs}
        for number in range(rounds):  # interleaved, alternating direction: a busy spell hits every variant
            order = list(runs) if number % 2 == 0 else list(runs)[::-1]
            for key in order:
                started = time.perf_counter()
                runs[key]()
                times[key].append(time.perf_counter() - started)
    reference = outputs[("reference", chunks[0])]
    exact = outputs[("fp32", chunks[0])] if "fp32" in modes else reference
    rows = []
    for (name, chunk), seconds in times.items():
        scores = outputs[(name, chunk)]
        rows.append({"mode": name, "chunk": chunk, "pairs": pairs,
                     "pairs_per_s_median": round(pairs / float(np.median(seconds)), 1),
                     "pairs_per_s_best": round(pairs / float(np.min(seconds)), 1),
                     "max_abs_diff_vs_reference": float(np.abs(scores - reference).max()),
                     "max_abs_diff_vs_fp32": float(np.abs(scores - exact).max())})
    best = {name: max((r for r in rows if r["mode"] == name), key=lambda r: r["pairs_per_s_median"])
            for name in ("reference", *modes)}
    return {"model": model.config.name, "token_shape": list(tokens.shape[1:]), "rounds": rounds, "results": rows,
            "best": {name: {"chunk": r["chunk"], "pairs_per_s_median": r["pairs_per_s_median"]}
                     for name, r in best.items()},
            "speedup_vs_reference_best_chunks": {
                name: round(best[name]["pairs_per_s_median"] / best["reference"]["pairs_per_s_median"], 2)
                for name in modes},
            "score_range": [float(reference.min()), float(reference.max())]}


# ----------------------------------------------------------------------------------------------
# Query latency


def measure_queries(checkpoint: Path, index_factory: Any, sketches: Sequence[bytes], modes: Sequence[str],
                    shortlist: int, rerank_batch_size: int, rounds: int) -> dict[str, Any]:
    """p50 per stage of whole searches for each mode, the modes taking turns each round."""
    from benchmarks.search_latency import STAGES, time_queries
    from service.engine import SearchEngine
    from service.settings import load_settings

    engines = {}
    for mode in modes:
        settings = load_settings(checkpoint=checkpoint, device="cpu", rerank_mode=mode,
                                 rerank_batch_size=rerank_batch_size, query_cache_size=8,
                                 torch_threads=torch.get_num_threads())
        engine = SearchEngine(settings)
        engine.load_model(checkpoint)
        engine.swap_index(index_factory())
        engines[mode] = engine
    samples: dict[str, dict[str, list[float]]] = {mode: {stage: [] for stage in STAGES} for mode in modes}
    per_round = max(1, len(sketches) // rounds)
    try:
        for number in range(rounds):
            part = sketches[number * per_round:(number + 1) * per_round]
            for mode in (modes if number % 2 == 0 else list(modes)[::-1]):
                timed = time_queries(engines[mode], part, shortlist, 10, warmup=1 if number == 0 else 0,
                                     raw=True)
                for stage in STAGES:
                    samples[mode][stage].extend(timed[stage])
    finally:
        for engine in engines.values():
            engine.close()
    return {mode: {stage: percentiles_ms(values) for stage, values in stages.items()}
            for mode, stages in samples.items()}


# ----------------------------------------------------------------------------------------------
# Agreement with exact mode on the demo split


def measure_agreement(model: Any, data: Path, modes: Sequence[str], shortlist: int, every: int) -> dict[str, Any]:
    """Top-10 overlap with fp32, category mAP@all and instance acc@1 of each mode (see the module doc)."""
    from benchmarks._ranking import mean_overlap, top_ids, two_stage_distances
    from benchmarks.demo_quality import demo_sets
    from indexer.retrieval import EmbeddedGallery, Tokens, relation_scores, shortlists
    from training.evaluate import embed
    from training.metrics import retrieval_metrics

    sets = demo_sets(data)
    queries = sets["queries"][::every]
    codes = sets["query_codes"][::every]
    cpu = torch.device("cpu")
    photos = embed(model, sets["gallery"], "photo", device=cpu, keep_tokens=True, num_workers=0, amp=False)
    gallery = EmbeddedGallery(photos.ret, photos.tokens, photos.kept)
    embedded = {}  # bf16 modes embed the sketch in bfloat16 as the server does: their own shortlists
    for bf16 in sorted({mode.startswith("bf16") for mode in modes}):
        sketches = embed(model, queries, "sketch", device=cpu, keep_tokens=True, num_workers=0, amp=False,
                         bf16=bf16)
        embedded[bf16] = (sketches, shortlists(gallery, sketches.ret.numpy(), shortlist),
                          (sketches.ret @ photos.ret.T).numpy())
    labels = np.array([sample.label for sample in sets["gallery"]])
    relevant = np.array([sample.label for sample in queries])[:, None] == labels[None, :]
    own = np.array(sets["gallery_codes"])[None, :] == np.array(codes)[:, None]
    results: dict[str, Any] = {}
    tops: dict[str, list[set[int]]] = {}
    for mode in modes:
        reranking = _reranking(model, mode)
        sketches, candidates, inner = embedded[reranking.mode.precision == "bf16"]
        started = time.perf_counter()
        rows = []
        for row, short in enumerate(candidates):
            sketch = Tokens(sketches.tokens[row:row + 1], None if sketches.kept is None else sketches.kept[row:row + 1])
            rows.append(relation_scores(model, gallery, sketch, short.ids, len(short.ids), cpu, False, reranking))
        seconds = time.perf_counter() - started
        distances = two_stage_distances(inner, [short.ids for short in candidates], rows)
        tops[mode] = [top_ids(short.ids, scores) for short, scores in zip(candidates, rows, strict=True)]
        category = retrieval_metrics(distances, relevant)
        first = distances.argmin(axis=1)
        results[mode] = {"map_all": category["map_all"], "prec_100": category["prec_100"],
                         "instance_acc1": float(own[np.arange(len(first)), first].mean()),
                         "rerank_ms_per_query": round(1000 * seconds / len(candidates), 2)}
    exact = tops.get("fp32")
    base = results.get("fp32", {}).get("map_all")
    for mode in modes:
        if exact is not None:
            results[mode]["top10_overlap"] = mean_overlap(tops[mode], exact)
        if base:
            change = results[mode]["map_all"] - base
            results[mode]["map_all_change"] = change
            results[mode]["map_all_change_relative"] = change / base
    return {"queries": len(queries), "gallery": len(labels), "bf16_sketches": "embedded in bfloat16 for bf16 modes", "shortlist": shortlist, "every": every,
            "modes": results}


# ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fast_modes", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("weights/zse-openmoji-demo.pt"))
    parser.add_argument("--data", type=Path, default=Path("data/demo"), help="prepared demo folder")
    parser.add_argument("--index", type=Path, default=Path("data/indexes/openmoji-demo"), help="built demo index")
    parser.add_argument("--modes", default=DEFAULT_MODES)
    parser.add_argument("--large", default="zse-vit-b16", help="random-weight preset for cost ('' = none)")
    parser.add_argument("--parts", default="pairs,query,agreement")
    parser.add_argument("--pairs", type=int, default=100, help="photos per query in the pairs part (K)")
    parser.add_argument("--chunks", default="16,32,100", help="photos per forward pass in the pairs part")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--queries", type=int, default=40, help="timed searches per mode (demo)")
    parser.add_argument("--large-queries", type=int, default=10, help="timed searches per mode (ViT-B/16)")
    parser.add_argument("--rerank-batch-size", type=int, default=32)
    parser.add_argument("--every", type=int, default=1, help="agreement on every N-th unseen drawing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the usable cores)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fast_modes.json"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import models
    from benchmarks.search_latency import SyntheticIndex, folder_sketches, synthetic_sketches, token_pool
    from models.device import configure_threads

    args = parse_args(argv)
    report = header("fast_modes", argv)
    report["torch_threads"] = set_threads(configure_threads(args.threads))
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    parts = set(args.parts.split(","))
    chunks = [int(value) for value in args.chunks.split(",")]
    report.update(modes=modes, checkpoint=str(args.checkpoint), pairs={}, query={}, agreement=None)
    demo = models.load(args.checkpoint, "cpu")
    report["checkpoint_sha256"] = demo.sha256
    torch.manual_seed(0)
    large = models.build_model(_large_config(args.large, modes)).eval() if args.large else None
    if "pairs" in parts:
        for model in (demo.model, large):
            if model is not None:
                report["pairs"][model.config.name] = result = measure_pairs(model, modes, args.pairs, chunks,
                                                                            args.rounds)
                print(f"pairs {result['model']}: " + ", ".join(
                    f"{name} {row['pairs_per_s_median']:.0f}/s" for name, row in result["best"].items()))
    if "query" in parts:
        import indexer

        sketches = folder_sketches(args.data / "sketch", args.queries)
        report["query"]["demo"] = measure_queries(
            args.checkpoint, lambda: indexer.open(args.index, checkpoint_hash=demo.sha256), sketches, modes,
            args.shortlist, args.rerank_batch_size, rounds=2)
        if large is not None:
            with tempfile.TemporaryDirectory(prefix="sbir-fast-modes-") as temporary:
                root = Path(temporary)
                checkpoint = models.save_checkpoint(large, root / "large.pt")
                pool, pool_kept = token_pool(large, 16)
                (root / "gallery").mkdir()
                report["query"][large.config.name] = measure_queries(
                    checkpoint, lambda: SyntheticIndex(root / "gallery", 1000, large.embed_dim, pool, pool_kept,
                                                       model=large),
                    synthetic_sketches(args.large_queries), modes, args.shortlist, args.rerank_batch_size, rounds=2)
        for name, per_mode in report["query"].items():
            print(f"query {name}: " + ", ".join(f"{mode} p50 {stages['total']['p50']:.0f} ms"
                                                  for mode, stages in per_mode.items()))
    if "agreement" in parts:
        report["agreement"] = agreement = measure_agreement(demo.model, args.data, modes, args.shortlist, args.every)
        for mode, row in agreement["modes"].items():
            print(f"agreement {mode}: top-10 overlap {row.get('top10_overlap', float('nan')):.4f}, "
                  f"mAP@all {row['map_all']:.5f} ({100 * row.get('map_all_change_relative', 0.0):+.3f} %)")
    finish(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
