"""Search latency per stage (decode, embed, ANN, re-rank, total): p50 / p95 / p99 per gallery size and shortlist.

    python -m benchmarks.search_latency [--checkpoint CKPT] [--sizes 1000,10000,100000]
        [--shortlists 50,100,200,500] [--queries 20]
    python -m benchmarks.search_latency --checkpoint weights/zse-openmoji-demo.pt \\
        --index data/indexes/openmoji-demo --sketches data/demo/sketch --shortlists 100

Each query goes through the service's own code: `service.uploads.decode_sketch` on PNG bytes, then
`SearchEngine.search` (preprocess + embed, FAISS shortlist, relation re-ranking from the token store,
records), whose stage timings are the ones `/search` reports; `total` is decode + search. Synthetic
galleries (`--sizes`) have random unit vectors in a FAISS index of the indexer's default type for
that size and a real memory-mapped token store (`--tokens fp16|int8`) tiled from the encoder's tokens
of a pool of noise images; `--index` measures a built index instead. Without `--checkpoint` a randomly
initialised `--model` is used (same cost as trained weights).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._report import finish, header, percentiles_ms, set_threads

STAGES = ("decode", "embed", "ann", "rerank", "total")


class SyntheticIndex:
    """The part of `indexer.GalleryIndex` that searching uses, over generated data.

    count photos with ids 0..count-1; vectors [count, D] random unit vectors in a FAISS index of
    `indexer.faiss_index.default_factory(count, D)`; tokens [count, T, D] in a real `TokenStore`
    (memory-mapped, dequantised on read), photo i holding pool photo i % len(pool).
    """

    def __init__(self, directory: Path, count: int, dim: int, pool_tokens: np.ndarray,
                 pool_kept: np.ndarray | None, fmt: str = "fp16", seed: int = 0, model: Any = None) -> None:
        import torch

        from indexer import faiss_index
        from indexer.pipeline import anchor_chunks, anchor_shape
        from indexer.records import ImageRecord
        from indexer.token_store import TokenStore, empty_layout, write_segment

        self._record_type = ImageRecord
        rng = np.random.default_rng(seed)
        vectors = rng.standard_normal((count, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        self.factory = faiss_index.default_factory(count, dim)
        self._index: Any = faiss_index.build_index(vectors, np.arange(count, dtype=np.int64), self.factory, seed=seed)
        faiss_index.apply_search_params(self._index, faiss_index.default_search_params(self._index))
        kept_count = None if pool_kept is None else pool_kept.shape[1]
        # With the model, the pre-scorer's anchors are stored as `sbir index build` stores them.
        anchors = None if model is None else anchor_shape(model, fmt)
        layout = empty_layout(fmt, pool_tokens.shape[1:], kept_count, anchors=anchors)
        chunks = self._chunks(count, pool_tokens, pool_kept, fmt)
        if anchors is not None:
            chunks = anchor_chunks(model, torch.device("cpu"), chunks)
        layout["segments"].append(write_segment(directory, layout, count, chunks))
        self._tokens = TokenStore(directory, layout)
        self.count = count
        self.name = f"synthetic-{count}"

    @staticmethod
    def _chunks(count: int, pool: np.ndarray, kept: np.ndarray | None, fmt: str) -> Iterator[dict[str, np.ndarray]]:
        from indexer.token_store import encode_tokens

        encoded = encode_tokens(pool, fmt)
        if kept is not None:
            encoded["kept"] = kept.astype(np.int16)
        for start in range(0, count, len(pool)):
            size = min(len(pool), count - start)
            yield {key: value[:size] for key, value in encoded.items()}

    @property
    def has_tokens(self) -> bool:
        return True

    def __len__(self) -> int:
        return self.count

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = self._index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        return ids.astype(np.int64), scores.astype(np.float32)

    def tokens(self, ids: Any) -> Any:
        import torch

        return torch.from_numpy(self._tokens.gather(np.asarray(ids, dtype=np.int64)))

    def kept(self, ids: Any) -> Any:
        import torch

        kept = self._tokens.gather_kept(np.asarray(ids, dtype=np.int64))
        return None if kept is None else torch.from_numpy(kept)

    def anchors(self, ids: Any) -> Any:
        import torch

        anchors = self._tokens.gather_anchors(np.asarray(ids, dtype=np.int64))
        return None if anchors is None else torch.from_numpy(anchors)

    def record(self, image_id: int) -> Any:
        if not 0 <= int(image_id) < self.count:
            raise KeyError(image_id)
        return self._record_type(id=int(image_id), path=f"synthetic/{int(image_id)}.png", label=None)

    def close(self) -> None:
        self._tokens.close()
        self._index = None


def synthetic_sketches(count: int, size: int = 256, seed: int = 0) -> list[bytes]:
    """`count` PNG line drawings (random strokes on white), as a client would upload them."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    sketches = []
    for _ in range(count):
        image = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            points = [tuple(int(v) for v in rng.integers(16, size - 16, 2)) for _ in range(int(rng.integers(2, 6)))]
            draw.line(points, fill="black", width=int(rng.integers(2, 6)))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        sketches.append(buffer.getvalue())
    return sketches


def folder_sketches(folder: Path, count: int) -> list[bytes]:
    """Up to `count` image files of `folder` (recursive, sorted) as bytes."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
    if not files:
        raise SystemExit(f"no PNG, JPEG or WebP files under {folder}")
    step = max(1, len(files) // count)
    return [path.read_bytes() for path in files[::step][:count]]


def token_pool(model: Any, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Encoder tokens [size, T', D] (and kept positions) of noise photos: realistic token statistics."""
    import torch

    generator = torch.Generator().manual_seed(1)
    images = torch.rand(size, 3, 224, 224, generator=generator) * 2 - 1
    with torch.inference_mode():
        encoded = model.encode(images, modality="photo")
    kept = None if encoded.kept is None else encoded.kept.numpy()
    return encoded.tokens.float().numpy(), kept


def time_queries(engine: Any, sketches: Sequence[bytes], shortlist: int, k: int, warmup: int,
                 raw: bool = False) -> dict[str, Any]:
    """Percentiles per stage of searching each sketch after ``warmup`` untimed ones (with ``raw``, the
    seconds of each search per stage instead)."""
    from service.uploads import decode_sketch

    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for number, data in enumerate([*sketches[:warmup], *sketches]):
        started = time.perf_counter()
        image = decode_sketch(data, max_pixels=25_000_000)
        decode_s = time.perf_counter() - started
        outcome = engine.search(image, k=k, shortlist=shortlist, rerank=True)
        total_s = time.perf_counter() - started
        if number < warmup:
            continue
        samples["decode"].append(decode_s)
        for stage in ("embed", "ann", "rerank"):
            samples[stage].append(outcome.timings_ms[stage] / 1000.0)
        samples["total"].append(total_s)
    if raw:
        return dict(samples)
    return {stage: percentiles_ms(values) for stage, values in samples.items()}


def make_engine(checkpoint: Path, args: argparse.Namespace) -> Any:
    from service.engine import SearchEngine
    from service.settings import load_settings

    settings = load_settings(checkpoint=checkpoint, device=args.device,
                             rerank_batch_size=args.rerank_batch_size, query_cache_size=8)
    engine = SearchEngine(settings)
    engine.load_model(checkpoint)
    return engine


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (default: random --model)")
    parser.add_argument("--model", default="zse-tiny", help="preset when no checkpoint is given")
    parser.add_argument("--index", type=Path, default=None, help="a built index directory instead of --sizes")
    parser.add_argument("--sizes", default="1000,10000,100000", help="synthetic gallery sizes")
    parser.add_argument("--shortlists", default="50,100,200,500")
    parser.add_argument("--k", type=int, default=20, help="results per query")
    parser.add_argument("--queries", type=int, default=20, help="timed queries per configuration")
    parser.add_argument("--warmup", type=int, default=2, help="untimed queries first")
    parser.add_argument("--sketches", type=Path, default=None, help="folder of sketch images (default: generated)")
    parser.add_argument("--tokens", default="fp16", choices=("fp16", "int8"), help="synthetic token store format")
    parser.add_argument("--pool", type=int, default=64, help="distinct photos tiled into a synthetic token store")
    parser.add_argument("--rerank-batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where synthetic token stores go (temp dir)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/search_latency.json"))
    return parser.parse_args(argv)


def run(args: argparse.Namespace, report: dict[str, Any], root: Path) -> None:
    import models

    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = models.save_checkpoint(models.build_model(args.model), root / "model.pt")
    engine = make_engine(checkpoint, args)
    model = engine.model.model
    report["model"] = model.config.name
    report["token_format"] = args.tokens
    sketches = (folder_sketches(args.sketches, args.queries) if args.sketches
                else synthetic_sketches(max(args.queries, args.warmup)))
    shortlists = [int(value) for value in args.shortlists.split(",")]
    report["results"] = []
    galleries: list[tuple[str, Any]] = []
    if args.index is not None:
        import indexer

        galleries.append(("index", lambda: indexer.open(args.index, checkpoint_hash=engine.model.sha256)))
    else:
        pool, pool_kept = token_pool(model, args.pool)
        for size in (int(value) for value in args.sizes.split(",")):
            folder = root / f"gallery-{size}"
            folder.mkdir()
            galleries.append(("synthetic", lambda size=size, folder=folder: SyntheticIndex(
                folder, size, model.embed_dim, pool, pool_kept, args.tokens, model=model)))
    for kind, open_gallery in galleries:
        started = time.perf_counter()
        index = open_gallery()
        setup_s = time.perf_counter() - started
        engine.swap_index(index)
        for shortlist in shortlists:
            stages = time_queries(engine, sketches, shortlist, args.k, args.warmup)
            row = {"gallery": kind, "gallery_size": len(index), "shortlist": min(shortlist, len(index)),
                   "k": args.k, "faiss": getattr(index, "factory", None) or index.manifest["faiss"]["factory"],
                   "setup_s": round(setup_s, 2), "stages_ms": stages}
            report["results"].append(row)
            print(f"{kind} {len(index):>7} photos, shortlist {shortlist:>4}: "
                  + ", ".join(f"{stage} p50 {stages[stage]['p50']:.1f}" for stage in STAGES) + " ms")
        engine.close()  # closes the index once no request uses it


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = header("search_latency", argv)
    report["torch_threads"] = set_threads(args.threads)
    report["checkpoint"] = None if args.checkpoint is None else str(args.checkpoint)
    report["queries"] = args.queries
    report["sketches"] = str(args.sketches) if args.sketches else "generated strokes"
    with tempfile.TemporaryDirectory(dir=args.work_dir, prefix="sbir-latency-") as temporary:
        run(args, report, Path(temporary))
    finish(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
