"""Time every explanation kind of GET /explain for one sketch-photo pair on the demo index.

    python -m benchmarks.explain [--manifest data/demo/manifest.csv] [--out benchmarks/results/explain.json]

Builds an index of the OpenMoji demo gallery with `--patch-index` (once; reused from `--work-dir` when
it already holds one built with the same checkpoint), using the demo weights
`weights/zse-openmoji-demo.pt` when they exist, else a freshly initialised zse-tiny (seed 0) saved
to the work directory (random weights cost the same time as trained ones; the result says which).
Then runs the real app in process (FastAPI TestClient, so routing, validation and serialisation
count), searches with the demo sketch of `--hexcode`, and times GET /explain for that sketch and
its own photo: each kind and option, JSON and PNG, `--repeats` times after one cold call.
Torch and FAISS use `--threads` threads (2: the 2-core target).
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._report import finish, header

LIMIT_MS = 1000.0
DEMO_WEIGHTS = Path("weights/zse-openmoji-demo.pt")
CASES: tuple[dict[str, Any], ...] = (
    {"kind": "correspondence"},
    {"kind": "correspondence", "level": "token", "box": "56,56,168,168"},
    {"kind": "attention"},
    {"kind": "influence"},
    {"kind": "synthesis", "source": "retrieved", "top": 5},
    {"kind": "synthesis", "source": "gallery", "k": 5},
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.explain", description=__doc__.split("\n")[0])
    parser.add_argument("--manifest", type=Path, default=Path("data/demo/manifest.csv"))
    parser.add_argument("--weights", type=Path, default=DEMO_WEIGHTS, help="checkpoint, if it exists")
    parser.add_argument("--hexcode", default="1F638", help="demo sketch (and photo) to explain")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch and FAISS threads")
    parser.add_argument("--work-dir", type=Path, default=None, help="where the index is built (default: temp)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/explain.json"))
    return parser.parse_args(argv)


def checkpoint_for(weights: Path, work_dir: Path) -> tuple[Path, str]:
    """The demo weights when present, else a fresh zse-tiny saved in `work_dir`; and what it is."""
    if weights.is_file():
        return weights, f"demo weights {weights}"
    import torch

    import models

    path = work_dir / "zse-tiny-seed0.pt"
    if not path.is_file():
        torch.manual_seed(0)
        models.save_checkpoint(models.build_model("zse-tiny"), path)
    return path, f"freshly initialised zse-tiny (seed 0; {weights} did not exist)"


def build_index(manifest: Path, checkpoint: Path, work_dir: Path) -> tuple[Path, float | None]:
    """The demo index with a patch index; seconds to build it (None when an existing one was reused)."""
    import indexer
    import models
    from indexer.errors import IndexerError

    out = work_dir / "demo-index"
    try:
        with indexer.open(out, checkpoint_hash=models.checkpoint_hash(checkpoint)) as index:
            if index.patch_index is not None:
                return out, None
    except IndexerError:
        pass
    started = time.perf_counter()
    indexer.build(manifest, checkpoint, out, device="cpu", num_workers=1, progress=False, patch_index=True)
    return out, round(time.perf_counter() - started, 2)


def demo_pair(manifest: Path, hexcode: str) -> tuple[Path, str]:
    """The demo sketch of `hexcode` and the gallery key of its photo."""
    with open(manifest, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["id"] == hexcode:
                photo = manifest.parent / row["path"]
                return manifest.parent / "sketch" / photo.parent.name / photo.name, row["id"]
    raise SystemExit(f"{hexcode} is not in {manifest}")


def time_case(client: Any, url: str, params: dict[str, Any], repeats: int,
              forget: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Time `repeats` + 1 requests (the first reported as cold); `forget` runs before each, so that
    every request computes its explanation (the service caches recent ones)."""
    from PIL import Image

    cold = None
    times = []
    size = None
    for attempt in range(repeats + 1):
        forget()
        started = time.perf_counter()
        response = client.get(url, params=params)
        elapsed = (time.perf_counter() - started) * 1000.0
        if response.status_code != 200:
            raise SystemExit(f"GET {url} {params}: {response.status_code} {response.text[:300]}")
        if attempt == 0:
            cold = elapsed
        else:
            times.append(elapsed)
        if params.get("format") == "png":
            size = list(Image.open(io.BytesIO(response.content)).size)
    median = statistics.median(times)
    return {**{k: v for k, v in params.items()}, "median_ms": round(median, 1), "min_ms": round(min(times), 1),
            "max_ms": round(max(times), 1), "cold_ms": round(cold or 0.0, 1), "bytes": len(response.content),
            "png_size": size, "under_limit": median < LIMIT_MS}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = header("explain", argv)
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    from fastapi.testclient import TestClient

    from indexer.gallery_index import open_index
    from indexer.manifest import read_manifest
    from service.main import create_app
    from service.settings import Settings

    with tempfile.TemporaryDirectory(prefix="sbir-explain-bench-") as temporary:
        work_dir = (args.work_dir or Path(temporary)).absolute()
        work_dir.mkdir(parents=True, exist_ok=True)
        checkpoint, model_source = checkpoint_for(args.weights, work_dir)
        index_dir, build_seconds = build_index(args.manifest, checkpoint, work_dir)
        manifest = read_manifest(index_dir)
        sketch_path, key = demo_pair(args.manifest, args.hexcode)
        with open_index(index_dir) as index:
            image_id = next(int(i) for i in index.ids if index.record(int(i)).key == key)
        values: dict[str, Any] = {"index_dir": index_dir, "checkpoint": checkpoint.absolute(), "index_root": work_dir,
                                  "data_roots": [work_dir], "jobs_db": work_dir / "jobs.sqlite3", "device": "cpu"}
        settings = Settings(**values)
        app = create_app(settings)
        with TestClient(app) as client:
            if not app.state.engine.wait_loaded(300):
                raise SystemExit("the service did not load the model and index")
            # The service's torch threads are the process's; re-assert after loading.
            torch.set_num_threads(args.threads)
            response = client.post("/search", params={"k": 10},
                                   files={"sketch": ("sketch.png", sketch_path.read_bytes(), "image/png")})
            response.raise_for_status()
            query_id = response.json()["query_id"]
            url = f"/explain/{query_id}/{image_id}"
            forget = app.state.engine.explanations.clear
            results = [time_case(client, url, {**case, "format": fmt}, args.repeats, forget)
                       for case in CASES for fmt in ("json", "png")]

    patch = manifest["patch_index"]
    report.update({
        "model": {"name": manifest["model"]["name"], "checkpoint": str(checkpoint), "source": model_source},
        "index": {"photos": manifest["count"], "faiss": manifest["faiss"]["factory"],
                  "tokens": manifest["tokens"]["format"], "patch_index": patch["factory"],
                  "patches": patch["ntotal"], "nprobe": patch.get("nprobe"),
                  "build_seconds_with_patch_index": build_seconds},
        "pair": {"sketch": str(sketch_path), "image_id": image_id, "key": key},
        "repeats": args.repeats,
        "threads": args.threads,
        "limit_ms": LIMIT_MS,
        "all_under_limit": all(result["under_limit"] for result in results),
        "results": results,
    })
    finish(report, args.out)
    for result in results:
        options = ", ".join(f"{k}={v}" for k, v in result.items() if k in ("kind", "level", "box", "source", "top",
                                                                         "k", "format"))
        print(f"{options:<60} median {result['median_ms']:>7.1f} ms  (cold {result['cold_ms']:.1f} ms)")
    print(f"wrote {args.out}; all under {LIMIT_MS:.0f} ms: {report['all_under_limit']}")
    return 0 if report["all_under_limit"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
