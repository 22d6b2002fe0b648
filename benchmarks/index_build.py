"""Index build throughput and size per photo, for each token-store format, on a generated gallery.

    python -m benchmarks.index_build [--count 512] [--model zse-tiny] [--out benchmarks/results/index_build.json]

Generates `count` JPEG photos (`--image-size` pixels square, a gradient plus noise, so decoding and
resizing cost what small real photos cost), saves a randomly initialised model of `--model` as a
checkpoint, and runs `indexer.build` once per format. Reports, per format: images/s of the whole build
and of the embedding step alone, and bytes per photo of the token store, the FAISS file and the whole
directory; plus the token-store sizes of ZSE ViT-B/16 at 100k and 1M photos, and the machine.
Random weights cost the same time as trained ones, so the figures hold for real checkpoints.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._machine import machine_details

FORMATS = ("fp16", "int8", "none")
VIT_B16_TOKENS = (197, 768)  # ZSE ViT-B/16: [Ret] + 14x14 patch tokens, width 768


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.index_build", description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=512, help="photos in the generated gallery")
    parser.add_argument("--model", default="zse-tiny", help="model preset (zse-tiny, zse-vit-b16, ...)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/index_build.json"))
    parser.add_argument("--formats", default=",".join(FORMATS), help="token formats to build, comma-separated")
    parser.add_argument("--image-size", type=int, default=256, help="side of the generated JPEGs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: cores - 1, max 8)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--index-type", default=None, help="FAISS factory (default: chosen by size)")
    parser.add_argument("--work-dir", type=Path, default=None, help="where to generate (default: a temp dir)")
    return parser.parse_args(argv)


def generate_gallery(root: Path, count: int, size: int, classes: int = 10) -> None:
    """`count` JPEGs in `classes` folders; deterministic (seed 0)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for number in range(count):
        folder = root / f"class_{number % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.uniform(0, 255, 3).astype(np.float32)
        slope = rng.uniform(-120, 120, (2, 3)).astype(np.float32)
        pixels = base + ramp[:, None, None] * slope[0] + ramp[None, :, None] * slope[1]
        pixels += rng.normal(0, 20, (size, size, 3)).astype(np.float32)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{number:07d}.jpg", quality=90)


def directory_sizes(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in sorted(directory.iterdir()) if path.is_file()}


def time_build(gallery: Path, checkpoint: Path, out: Path, fmt: str, args: argparse.Namespace) -> dict[str, Any]:
    """One build; the embedding step is timed by wrapping the pipeline's call to it."""
    import indexer
    from indexer import pipeline

    real_embed = pipeline.embed_shards
    embed_seconds: list[float] = []

    def timed_embed(*call_args: Any, **call_kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return real_embed(*call_args, **call_kwargs)
        finally:
            embed_seconds.append(time.perf_counter() - started)

    pipeline.embed_shards = timed_embed
    try:
        started = time.perf_counter()
        indexer.build(gallery, checkpoint, out, tokens=fmt, index_type=args.index_type, batch_size=args.batch_size,
                      device=args.device, num_workers=args.workers, progress=False)
        total_seconds = time.perf_counter() - started
    finally:
        pipeline.embed_shards = real_embed
    with indexer.open(out) as index:
        count, manifest = len(index), index.manifest
    sizes = directory_sizes(out)
    token_bytes = sum(size for name, size in sizes.items() if name.startswith("tokens"))
    return {
        "format": fmt,
        "photos": count,
        "build_seconds": round(total_seconds, 3),
        "embed_seconds": round(embed_seconds[0], 3),
        "build_images_per_s": round(count / total_seconds, 1),
        "embed_images_per_s": round(count / embed_seconds[0], 1),
        "token_bytes_per_photo": round(token_bytes / count, 1),
        "faiss_bytes_per_photo": round(sizes["index.faiss"] / count, 1),
        "directory_bytes_per_photo": round(sum(sizes.values()) / count, 1),
        "faiss_factory": manifest["faiss"]["factory"],
        "token_shape": manifest["tokens"]["shape"],
        "device": manifest["embedding"]["device_type"],
        "autocast": manifest["embedding"]["autocast"],
        "files": sizes,
    }


def vit_b16_projection() -> dict[str, Any]:
    """Token-store bytes of ZSE ViT-B/16 per photo and at 100k / 1M photos (computed, not measured)."""
    from indexer.token_store import bytes_per_photo

    return {
        fmt: {
            "bytes_per_photo": bytes_per_photo(fmt, VIT_B16_TOKENS),
            "bytes_100k": bytes_per_photo(fmt, VIT_B16_TOKENS) * 100_000,
            "bytes_1m": bytes_per_photo(fmt, VIT_B16_TOKENS) * 1_000_000,
        }
        for fmt in FORMATS
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import models

    formats = [fmt.strip() for fmt in args.formats.split(",") if fmt.strip()]
    with tempfile.TemporaryDirectory(dir=args.work_dir) as temporary:
        root = Path(temporary)
        gallery = root / "gallery"
        started = time.perf_counter()
        generate_gallery(gallery, args.count, args.image_size)
        generate_seconds = time.perf_counter() - started
        checkpoint = models.save_checkpoint(models.build_model(args.model, pretrained=False), root / "model.pt")
        # Warm-up build on a few photos: imports, thread pools and allocator growth are not build speed.
        warm = root / "warm"
        generate_gallery(warm, min(args.count, 2 * args.batch_size), args.image_size)
        time_build(warm, checkpoint, root / "warm-index", formats[0], args)
        results = [time_build(gallery, checkpoint, root / f"index-{fmt}", fmt, args) for fmt in formats]
    return {
        "benchmark": "index_build",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": args.model,
        "photos": args.count,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "generate_seconds": round(generate_seconds, 2),
        "results": results,
        "vit_b16_token_store": vit_b16_projection(),
        "machine": machine_details(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    from models.atomic import write_json_atomic

    args = parse_args(argv)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, report)
    for row in report["results"]:
        print(f"{report['model']} {row['format']:>4}: {row['build_images_per_s']:8.1f} img/s build, "
              f"{row['embed_images_per_s']:8.1f} img/s embedding, {row['token_bytes_per_photo']:>10,.0f} B tokens "
              f"+ {row['faiss_bytes_per_photo']:,.0f} B FAISS per photo")
    machine = report["machine"]
    print(f"machine: {machine['cpu_model']}, {machine['cpu_cores_usable']} cores, "
          f"GPU: {', '.join(gpu['name'] for gpu in machine['gpus']) or 'none'}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
