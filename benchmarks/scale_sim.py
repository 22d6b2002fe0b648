"""A million-photo index on this machine: build it on disk, serve it, and time every stage.

    python -m benchmarks.scale_sim --photos 1000000 --work-dir data/indexes/sim \
        --demo-index data/indexes/openmoji-demo --checkpoint weights/zse-openmoji-demo.pt

The photos are synthetic but shaped as the demo model's: [Ret] vectors of its width (each a demo
photo's vector plus Gaussian noise, so the lists fill unevenly as real ones do) and tokens of its
shape, stored with ``--tokens rq`` at 32 bytes a token (a codec trained on the demo index's real
tokens; photo i holds the codes of demo photo i mod ``--pool``, so decoding costs what real codes
cost). The index is a real published index directory (``indexer.gallery_index.open_index`` opens
it; ``sbir index info`` describes it), built the way ``sbir index build --on-disk`` builds one:
an IVF-PQ trained once on a sample, each shard added with its explicit ids into a block, the blocks
merged into one memory-mapped ``index.ivfdata``.

Serving is measured in a fresh process (so its resident memory is serving's own): the real
``SearchEngine`` with the demo checkpoint, the demo's unseen line drawings as queries, re-ranking
``--shortlist`` photos; the demo index is searched by the same engine settings in the same process
for the comparison. Per stage (ANN, token fetch, re-rank, whole search): p50 and p99 with a cold
page cache (before each query the index is opened afresh and ``/proc/sys/vm/drop_caches`` written,
where it can be; said plainly where not), then warm (the same queries again, their pages cached). Writes ``benchmarks/results/scale_sim.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._report import finish, header, percentiles_ms
from models.atomic import write_json_atomic

TOKEN_BYTES = 32


# ----------------------------------------------------------------------------------------------
# Build


def synthetic_vectors(centres: np.ndarray, start: int, count: int, noise: float, seed: int) -> np.ndarray:
    """Photos start..start+count-1: demo vector (i mod G) plus N(0, noise^2 / D) per dimension, normalised."""
    rng = np.random.default_rng([seed, start])
    rows = np.arange(start, start + count) % len(centres)
    vectors = centres[rows] + rng.standard_normal((count, centres.shape[1]), dtype=np.float32) * (
        noise / np.sqrt(centres.shape[1]))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def demo_arrays(demo: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The demo index's [Ret] vectors [G, D] (read back from FAISS), its fp16 tokens (memory map) and manifest."""
    import faiss

    from indexer.manifest import INDEX_FILE, read_manifest

    manifest = read_manifest(demo)
    if manifest["tokens"]["format"] != "fp16":
        raise SystemExit(f"{demo}: needs an fp16 token store to train the codec on, not {manifest['tokens']['format']}")
    index = faiss.read_index(str(demo / INDEX_FILE))
    vectors = np.vstack([index.reconstruct(int(i)) for i in np.load(demo / "ids.npy")]).astype(np.float32)
    tokens = np.load(demo / manifest["tokens"]["segments"][0]["tokens"], mmap_mode="r")
    return vectors, tokens, manifest


def build(args: argparse.Namespace) -> dict[str, Any]:
    """Write the synthetic index into ``args.work_dir / sim-N`` (staging, then published); timings and sizes."""
    from indexer.publish import make_staging

    staging = make_staging(index_dir(args))
    try:
        return _build(args, staging)
    except BaseException:  # nothing half-built is left behind
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(_blocks_dir(staging), ignore_errors=True)
        raise


def _blocks_dir(staging: Path) -> Path:
    return staging.parent / f".{staging.name}.blocks"


def _build(args: argparse.Namespace, staging: Path) -> dict[str, Any]:
    from indexer import faiss_index, ondisk, token_codec
    from indexer.manifest import INDEX_FILE, now, write_manifest
    from indexer.publish import publish
    from indexer.records import ImageRecord, write_records
    from indexer.token_store import empty_layout, write_segment

    out = index_dir(args)
    centres, demo_tokens, template = demo_arrays(args.demo_index)
    count, dim = args.photos, centres.shape[1]
    factory = args.factory or faiss_index.ivf_pq_factory(count, dim)
    ondisk.check_factory(factory, dim)
    timings: dict[str, float] = {}
    work = _blocks_dir(staging)
    started = time.perf_counter()

    # Up to 2M photos the build's own sample rule draws from all of them; above, from the first ones
    # (as many as the rule takes), so that the whole gallery is never in memory.
    source = count if count <= 2_000_000 else faiss_index.train_sample_size(faiss_index.create_index(factory, dim),
                                                                             count)
    trained = faiss_index.train_empty(factory, synthetic_vectors(centres, 0, source, args.noise, args.seed), args.seed)
    timings["train_s"] = time.perf_counter() - started

    def shards() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for first in range(0, count, args.shard_size):
            size = min(args.shard_size, count - first)
            yield (synthetic_vectors(centres, first, size, args.noise, args.seed),
                   np.arange(first, first + size, dtype=np.int64))

    mark = time.perf_counter()
    index = ondisk.build(shards(), trained, staging, work)
    import faiss

    faiss.write_index(index, str(staging / INDEX_FILE))
    params = faiss_index.default_search_params(index)
    faiss_entry = {**faiss_index.metadata(index, factory, params), **ondisk.metadata(True)}
    del index
    shutil.rmtree(work, ignore_errors=True)
    timings["ann_blocks_and_merge_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    flat = np.asarray(demo_tokens, dtype=np.float32).reshape(-1, demo_tokens.shape[-1])
    codec = token_codec.train(flat[np.random.default_rng(args.seed).choice(
        len(flat), min(len(flat), token_codec.TRAIN_SAMPLE), replace=False)], TOKEN_BYTES)
    token_codec.save(codec, staging)
    pool = token_codec.encode(codec, np.asarray(demo_tokens[: args.pool], dtype=np.float32))  # [pool, T, C] uint8
    timings["codec_train_and_pool_encode_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    layout = empty_layout("rq", demo_tokens.shape[1:], None, TOKEN_BYTES)

    def code_chunks() -> Iterator[dict[str, np.ndarray]]:
        for first in range(0, count, args.shard_size):
            rows = np.arange(first, min(count, first + args.shard_size)) % args.pool
            yield {"tokens": pool[rows]}

    layout["segments"].append(write_segment(staging, layout, count, code_chunks()))
    timings["token_store_write_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    write_records(staging, [ImageRecord(id=i, path=f"synthetic/{i:09d}.png", label=f"c{i % 1000}", key=f"{i:09d}")
                            for i in range(count)])
    timings["records_write_s"] = time.perf_counter() - mark

    created = now()
    write_manifest(staging, {
        **{key: template[key] for key in ("format_version", "model", "preprocessing", "embedding", "dimension",
                                          "files")},
        "name": f"synthetic-{count}", "created_at": created, "updated_at": created,
        "count": count, "next_id": count, "skipped": 0, "faiss": faiss_entry, "tokens": layout,
        "galleries": [{"kind": "synthetic", "source": "benchmarks.scale_sim", "first_id": 0, "last_id": count - 1,
                       "listed": count, "skipped": 0, "added_at": created, "root": str(out), "fingerprint": None}],
    })
    publish(staging, out)
    timings["total_s"] = time.perf_counter() - started
    files = {path.name: path.stat().st_size for path in sorted(out.iterdir())}
    return {"factory": factory, "photos": count, "shard_size": args.shard_size, "pool": args.pool,
            "timings_s": {key: round(value, 2) for key, value in timings.items()},
            "disk_bytes": {"files": files, "total": sum(files.values()), "per_photo": sum(files.values()) / count}}


def index_dir(args: argparse.Namespace) -> Path:
    return args.work_dir / f"sim-{args.photos}"


# ----------------------------------------------------------------------------------------------
# Serve (in a fresh process)


def drop_page_cache() -> str | None:
    """Empty the kernel's page cache; None when done, else why it could not be."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("1\n")
        return None
    except OSError as error:
        return f"/proc/sys/vm/drop_caches not writable here ({error.strerror})"


def memory_status() -> dict[str, int]:
    """This process's resident memory (bytes): all, anonymous (heap), file-backed (mapped files) and the
    peak (VmHWM; not getrusage's ru_maxrss, which Linux carries over an exec from the parent's fork)."""
    wanted = {"VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file", "VmHWM": "peak_rss"}
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, rest = line.partition(":")
            if key in wanted:
                values[wanted[key]] = int(rest.split()[0]) * 1024
    return values


def _reopen_cold(engine: Any, directory: Path) -> None:
    """Serve a fresh open of ``directory`` with nothing of it in the page cache."""
    from indexer.gallery_index import open_index

    engine.swap_index(open_index(directory))  # the previous one closes: its maps are released
    gc.collect()
    drop_page_cache()


def serve(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from benchmarks.search_latency import folder_sketches
    from indexer.gallery_index import open_index
    from service.engine import SearchEngine
    from service.settings import load_settings
    from service.uploads import decode_sketch

    torch.set_num_threads(args.threads)
    sketches = [decode_sketch(data, max_pixels=25_000_000)
                for data in folder_sketches(args.sketches, args.queries + args.warmup)]
    before_open = memory_status()
    engines = {}
    for name, directory in (("sim", index_dir(args)), ("demo", args.demo_index)):
        settings = load_settings(checkpoint=args.checkpoint, device="cpu", rerank_batch_size=args.rerank_batch_size,
                                 query_cache_size=1, torch_threads=args.threads)
        engine = SearchEngine(settings)
        engine.load_model(args.checkpoint)
        engine.swap_index(open_index(directory))
        engines[name] = engine
    result: dict[str, Any] = {"memory_after_open": memory_status(), "memory_before_open": before_open}
    directories = {"sim": index_dir(args), "demo": args.demo_index}
    for image in sketches[: args.warmup]:  # model warm-up; the warm pass below re-reads these pages anyway
        for engine in engines.values():
            engine.search(image, k=10, shortlist=args.shortlist, rerank=True)
    queries = sketches[args.warmup:]
    cold_reason = drop_page_cache() if args.cold else "--no-cold"
    # Each query twice: cold (a freshly opened index, the page cache dropped; a page that a process
    # still maps survives drop_caches, so the old index is closed first), then warm (the same search
    # again, its pages now cached). Without drop_caches, only warm.
    labels = ("warm",) if cold_reason else ("cold", "warm")
    if cold_reason:
        result["cold"] = {"skipped": cold_reason}
    samples: dict[str, dict[str, dict[str, list[float]]]] = {label: {name: {} for name in engines}
                                                             for label in labels}
    for image in queries:
        for name, engine in engines.items():
            if not cold_reason:
                _reopen_cold(engine, directories[name])
            for label in labels:
                started = time.perf_counter()
                outcome = engine.search(image, k=10, shortlist=args.shortlist, rerank=True)
                total = time.perf_counter() - started
                stages = samples[label][name]
                for stage in ("embed", "ann", "rerank"):
                    stages.setdefault(stage, []).append(outcome.timings_ms[stage] / 1000.0)
                stages.setdefault("total", []).append(total)
    for label in labels:
        result[label] = {name: {stage: percentiles_ms(values) for stage, values in stages.items()}
                         for name, stages in samples[label].items()}
    result["memory_after_searches"] = memory_status()
    # Token fetch (read and decode) alone, for the sim index's shortlists (re-ranking includes it).
    shortlists = [[hit.image_id for hit in engines["sim"].search(image, k=args.shortlist, shortlist=args.shortlist,
                                                                  rerank=False).hits] for image in queries]
    for engine in engines.values():  # their maps would keep the shortlists' pages in the cache
        engine.close()
    fetch: dict[str, list[float]] = {"cold": [], "warm": []}
    for ids in shortlists:
        if not cold_reason:
            gc.collect()  # the last open's maps released, so that its pages can be dropped
            drop_page_cache()
        gallery = open_index(directories["sim"])
        for label in ("cold", "warm"):  # the first read from disk (when dropped), the second from the cache
            started = time.perf_counter()
            gallery.tokens(ids)
            fetch[label].append(time.perf_counter() - started)
        gallery.close()
    if cold_reason:
        fetch["cold"] = []
    for label, values in fetch.items():
        if values:
            result[label]["sim"]["token_fetch"] = percentiles_ms(values)
    return result


# ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_sim", description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=1_000_000)
    parser.add_argument("--work-dir", type=Path, default=Path("data/indexes/sim"))
    parser.add_argument("--demo-index", type=Path, default=Path("data/indexes/openmoji-demo"))
    parser.add_argument("--checkpoint", type=Path, default=Path("weights/zse-openmoji-demo.pt"))
    parser.add_argument("--sketches", type=Path, default=Path("data/demo/sketch"))
    parser.add_argument("--factory", default=None, help="FAISS factory (default: the indexer's IVF-PQ for the size)")
    parser.add_argument("--shard-size", type=int, default=100_000)
    parser.add_argument("--pool", type=int, default=256, help="distinct demo photos whose codes are tiled")
    parser.add_argument("--noise", type=float, default=0.5, help="norm of the noise added to each demo vector")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--rerank-batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-cold", dest="cold", action="store_false",
                        help="warm page cache only: leave /proc/sys/vm/drop_caches alone")
    parser.add_argument("--reuse", action="store_true", help="serve an index this benchmark built before")
    parser.add_argument("--remove", action="store_true", help="delete the index afterwards")
    parser.add_argument("--serve-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale_sim.json"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_only:
        print(json.dumps(serve(args)))
        return 0
    report = header("scale_sim", argv)
    # The build's figures live beside the index (never inside a published directory), for --reuse.
    built = args.work_dir / f"sim-{args.photos}.build.json"
    if args.reuse and (index_dir(args) / "manifest.json").is_file() and built.is_file():
        report["build"] = {**json.loads(built.read_text()), "reused": True}
    else:
        report["build"] = build(args)
        write_json_atomic(built, report["build"])
    child = subprocess.run([sys.executable, "-m", "benchmarks.scale_sim", "--serve-only", *(argv or sys.argv[1:])],
                           capture_output=True, text=True, check=False)
    if child.returncode != 0:
        raise SystemExit(f"serving process failed:\n{child.stderr[-3000:]}")
    report["serve"] = json.loads(child.stdout.strip().splitlines()[-1])
    if args.remove:
        shutil.rmtree(index_dir(args))
    finish(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
