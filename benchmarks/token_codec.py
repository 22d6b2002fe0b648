"""Compressed token stores (`--tokens rq`) against fp16: bytes, relation-score error and ranking.

    python -m benchmarks.token_codec --checkpoint weights/zse-openmoji-demo.pt --data data/demo \\
        --fp16-index data/indexes/openmoji-demo --token-bytes 16,32,64 [--work-dir DIR]

- **demo**: for each ``--token-bytes`` an index of the demo gallery is built with ``--tokens rq``
  (``indexer.build``, the same gallery and checkpoint as the fp16 index; kept in ``--work-dir``). Every
  unseen OpenMoji line drawing is searched through the service's retrieval path
  (``indexer.retrieval``: embed, the fp16 index's shortlist of K, relation scores read from each
  store): relation-score error against the fp16 store, top-10 overlap with its ranking, category
  mAP@all among all photos (reference style) and its change.
- **vit-b16**: the cost at ViT-B/16 width (197 x 768 tokens of a randomly initialised encoder on
  noise images): bytes per token and per photo, the relation-sensitivity metric, codec training,
  encoding and decoding time, and the reconstruction error relative to the tokens' norm.
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

from benchmarks._report import finish, header, set_threads


def demo_part(checkpoint: Path, data: Path, fp16_index: Path, budgets: Sequence[int], work: Path,
              shortlist: int, every: int) -> dict[str, Any]:
    import indexer
    import models
    from benchmarks._ranking import mean_overlap, top_ids, two_stage_distances
    from benchmarks.demo_quality import demo_sets
    from indexer import retrieval
    from models import preprocess
    from training.metrics import retrieval_metrics

    loaded = models.load(checkpoint, "cpu")
    sets = demo_sets(data)
    queries = sets["queries"][::every]
    labels = np.array([sample.label for sample in sets["gallery"]])
    relevant = np.array([sample.label for sample in queries])[:, None] == labels[None, :]
    stores: dict[str, Any] = {"fp16": indexer.open(fp16_index, checkpoint_hash=loaded.sha256)}
    builds: dict[str, float] = {}
    for budget in budgets:
        out = work / f"rq{budget}"
        if not (out / "manifest.json").is_file():
            started = time.perf_counter()
            indexer.build(data / "manifest.csv", checkpoint, out, tokens="rq", token_bytes=budget, device="cpu",
                          progress=False, name=f"openmoji-demo-rq{budget}")
            builds[f"rq{budget}"] = round(time.perf_counter() - started, 1)
        stores[f"rq{budget}"] = indexer.open(out, checkpoint_hash=loaded.sha256)
    cpu = torch.device("cpu")
    scores: dict[str, list[np.ndarray]] = {name: [] for name in stores}
    shortlists: list[np.ndarray] = []
    inner = []
    for sample in queries:
        embedding = retrieval.embed_sketch(loaded.model, preprocess.sketch(preprocess.load_rgb(sample.path)), cpu)
        short = retrieval.shortlist(stores["fp16"], embedding.ret, shortlist)
        shortlists.append(short.ids)
        ids_all, sims_all = stores["fp16"].search(embedding.ret, len(labels))
        row = np.full(len(labels), -1.0, dtype=np.float32)
        row[ids_all[0]] = sims_all[0]
        inner.append(row)
        assert embedding.tokens is not None
        for name, store in stores.items():
            scores[name].append(retrieval.relation_scores(loaded.model, store, embedding.tokens, short.ids, 32, cpu))
    report: dict[str, Any] = {"queries": len(queries), "gallery": len(labels), "shortlist": shortlist,
                              "build_seconds": builds, "stores": {}}
    exact_top = [top_ids(ids, s) for ids, s in zip(shortlists, scores["fp16"], strict=True)]
    base_map = None
    for name, store in stores.items():
        distances = two_stage_distances(np.stack(inner), shortlists, scores[name])
        map_all = retrieval_metrics(distances, relevant)["map_all"]
        base_map = map_all if name == "fp16" else base_map
        error = np.abs(np.concatenate(scores[name]) - np.concatenate(scores["fp16"]))
        tops = [top_ids(ids, s) for ids, s in zip(shortlists, scores[name], strict=True)]
        sample_ids = np.arange(0, len(labels), max(1, len(labels) // 200))
        reference = stores["fp16"].tokens(sample_ids).numpy() if name != "fp16" else None
        reconstruction = (float(np.linalg.norm(store.tokens(sample_ids).numpy() - reference, axis=-1).mean()
                                / np.linalg.norm(reference, axis=-1).mean()) if reference is not None else 0.0)
        layout = store.manifest["tokens"]
        report["stores"][name] = {
            "bytes_per_photo": int(layout["bytes_per_photo"]),
            "bytes_per_token": int(layout["bytes_per_photo"]) // int(layout["shape"][0]),
            "codec": layout.get("codec"),
            "relative_reconstruction_error_vs_fp16": reconstruction,
            "relation_abs_error_max": float(error.max()), "relation_abs_error_mean": float(error.mean()),
            "top10_overlap": mean_overlap(tops, exact_top),
            "map_all": map_all,
            "map_all_change_relative": (map_all - base_map) / base_map if base_map else None,
        }
    for store in stores.values():
        store.close()
    return report


def large_part(preset: str, budgets: Sequence[int], photos: int) -> dict[str, Any]:
    import models
    from benchmarks.search_latency import token_pool
    from indexer import token_codec, token_metric

    torch.manual_seed(0)
    model = models.build_model(preset).eval()
    tokens, _ = token_pool(model, photos)  # [photos, T, D] float32
    flat = tokens.reshape(-1, tokens.shape[-1])
    norm = float(np.linalg.norm(flat, axis=1).mean())
    # The build's coding space: the relation score's sensitivity.
    started = time.perf_counter()
    transform = token_metric.coding_transform(model, tokens)
    metric_s = time.perf_counter() - started
    rows = []
    for budget in budgets:
        started = time.perf_counter()
        codec = token_codec.train(flat, budget, transform=transform)
        trained = time.perf_counter() - started
        started = time.perf_counter()
        codes = token_codec.encode(codec, tokens)
        encoded = time.perf_counter() - started
        shortlist = codes[np.arange(100) % len(codes)]
        started = time.perf_counter()
        decoded = token_codec.decode(codec, shortlist)
        decode_s = time.perf_counter() - started
        error = np.linalg.norm(token_codec.decode(codec, codes) - tokens, axis=-1).mean()
        rows.append({"token_bytes": budget, "bytes_per_token": int(codes.shape[-1]),
                     "bytes_per_photo": int(codes.shape[-1] * codes.shape[1]),
                     "fp16_bytes_per_photo": int(2 * tokens.shape[1] * tokens.shape[2]),
                     "reduction_vs_fp16": round(2 * tokens.shape[2] / codes.shape[-1], 1),
                     "codec": token_codec.describe(budget)["factory"],
                     "metric_s": round(metric_s, 2), "metric_pairs": token_metric.QUERIES * token_metric.PHOTOS_PER_QUERY,
                     "train_s": round(trained, 2), "train_vectors": int(min(len(flat), token_codec.TRAIN_SAMPLE)),
                     "encode_photos_per_s": round(len(tokens) / encoded, 1),
                     "decode_100_photos_ms": round(1000 * decode_s, 2), "decoded_shape": list(decoded.shape),
                     "relative_reconstruction_error": float(error / norm)})
    return {"model": preset, "token_shape": list(tokens.shape[1:]), "photos": photos, "results": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.token_codec", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("weights/zse-openmoji-demo.pt"))
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--fp16-index", type=Path, default=Path("data/indexes/openmoji-demo"))
    parser.add_argument("--token-bytes", default="16,32,64")
    parser.add_argument("--parts", default="demo,vit-b16")
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--every", type=int, default=1, help="every N-th unseen drawing")
    parser.add_argument("--large", default="zse-vit-b16")
    parser.add_argument("--large-photos", type=int, default=64, help="noise photos whose tokens train the codec")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the rq indexes go (default: temporary)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/token_codec.json"))
    args = parser.parse_args(argv)
    report = header("token_codec", argv)
    report["torch_threads"] = set_threads(args.threads)
    budgets = [int(value) for value in args.token_bytes.split(",")]
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="sbir-token-codec-") as temporary:
        work = args.work_dir or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        if "demo" in parts:
            report["demo"] = demo_part(args.checkpoint, args.data, args.fp16_index, budgets, work, args.shortlist,
                                       args.every)
            for name, row in report["demo"]["stores"].items():
                print(f"demo {name}: {row['bytes_per_token']} B/token, score error max {row['relation_abs_error_max']:.2e}"
                      f", top-10 overlap {row['top10_overlap']:.4f}, mAP@all {row['map_all']:.5f}")
    if "vit-b16" in parts and args.large:
        report["large"] = large_part(args.large, budgets, args.large_photos)
        for row in report["large"]["results"]:
            print(f"{args.large} rq{row['token_bytes']}: {row['bytes_per_token']} B/token "
                  f"({row['reduction_vs_fp16']}x), relative error {row['relative_reconstruction_error']:.3f}")
    finish(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
