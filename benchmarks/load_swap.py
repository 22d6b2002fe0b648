"""Load with an index swap: `/search` under concurrent clients while an index build job runs and is
swapped in.

    python -m benchmarks.load_swap [--checkpoint CKPT --index DIR --gallery DIR] [--concurrency 4]
        [--duration 60] [--build-after 5]

The real server (`sbir serve`, uvicorn) starts as a subprocess on a free loopback port, serving `--index`
(default: an index built here from generated photos). The load generator (`benchmarks.loadgen`) runs as
a second process for `--duration` seconds; `--build-after` seconds into the measured load, `POST
/index/build` queues a build of `--gallery` (default: other generated photos) with `activate`, and the
benchmark follows the job until the server answers from the new index. The run passes when every
request was answered 200, the job succeeded, and answers came from the old index before the swap and
from the new one after it, all within the load. Writes `benchmarks/results/load_swap.json`; exits 1
when the run did not pass, naming why.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._report import finish, header, relative_times, verdict_status
from benchmarks.server_throughput import free_port, launch_server, loadgen_command, stop_server, wait_ready

ADMIN_TOKEN = "load-swap-benchmark-token"
NEW_INDEX = "swapped-in"


def start_server(index: Path, checkpoint: Path, port: int, state: Path, data_root: Path,
                 args: argparse.Namespace) -> subprocess.Popen[bytes]:
    settings = dict(SBIR_DEVICE=args.device, SBIR_ADMIN_TOKEN=ADMIN_TOKEN, SBIR_DATA_ROOTS=json.dumps([str(data_root)]),
                    SBIR_INDEX_ROOT=str(state / "indexes"), SBIR_JOBS_DB=str(state / "jobs.sqlite3"),
                    SBIR_RERANK_BATCH_SIZE=str(args.rerank_batch_size))
    return launch_server(index, checkpoint, port, settings, args.server_threads, state / "server.log")


def follow_build(url: str, gallery: str, started_load: float, args: argparse.Namespace) -> dict[str, Any]:
    """Queue the build `--build-after` s into the measured load; follow it until the swap or a failure."""
    import httpx

    time.sleep(max(0.0, started_load + args.warmup + args.build_after - time.time()))
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    timeline: dict[str, Any] = {"submitted_at_unix": round(time.time(), 3)}
    with httpx.Client(base_url=url, timeout=60.0) as http:
        response = http.post("/index/build", headers=headers,
                             json={"gallery": gallery, "name": NEW_INDEX, "tokens": "fp16", "activate": True})
        if response.status_code != 202:
            return {**timeline, "state": "refused", "error": f"{response.status_code}: {response.text[:300]}"}
        job_id = response.json()["id"]
        deadline = time.time() + args.build_timeout
        job: dict[str, Any] = {}
        while time.time() < deadline:
            job = http.get(f"/jobs/{job_id}").json()
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.25)
        timeline.update(job_id=job_id, state=job.get("state"), error=job.get("error"),
                        finished_at_unix=round(time.time(), 3))
        # The success hook swaps the index in; the next answers name it.
        while job.get("state") == "succeeded" and time.time() < deadline:
            if http.get("/index").json().get("name") == NEW_INDEX:
                timeline["served_at_unix"] = round(time.time(), 3)
                break
            time.sleep(0.1)
    return timeline


def verdict(load: dict[str, Any], build: dict[str, Any], old_name: str) -> list[str]:
    """Why the run did not pass (empty: it passed)."""
    problems = []
    failed = {status: count for status, count in load["status_counts"].items() if status != "200"}
    if failed:
        problems.append(f"failed requests during the load: {failed} (first: {load['failures'][:2]})")
    if build.get("state") != "succeeded":
        problems.append(f"the build job did not succeed: {build.get('state')} {build.get('error')}")
    elif "served_at_unix" not in build:
        problems.append("the built index was never served")
    indexes = load.get("indexes", {})
    if old_name not in indexes or NEW_INDEX not in indexes:
        problems.append(f"answers did not come from both indexes during the load: {sorted(indexes)}")
    elif indexes[NEW_INDEX]["first_s"] < indexes[old_name]["first_s"]:
        # A swap is one way. (The old index's last answer may come after the new one's first: a request
        # keeps the index it started with.)
        problems.append("the new index answered before the old one")
    return problems


def phases(answers: Sequence[Sequence[float]], build: dict[str, float]) -> dict[str, Any]:
    """Latency percentiles and requests/s of the answers before the build was queued, while it ran
    (until the new index was served) and after; answers are [seconds into the load, latency ms]."""
    from benchmarks._report import percentiles_ms

    edges = [0.0, build.get("submitted_s"), build.get("served_s"), answers[-1][0] if answers else 0.0]
    if any(edge is None for edge in edges):
        return {}
    out = {}
    for name, low, high in zip(("before_build", "during_build", "after_swap"), edges, edges[1:], strict=False):
        inside = [latency / 1000.0 for at, latency in answers if low <= at < high or (name == "after_swap" and at == high)]
        span = max(float(high) - float(low), 1e-9)
        out[name] = {"from_s": round(float(low), 3), "to_s": round(float(high), 3),
                     "requests_per_s": round(len(inside) / span, 3), "latency_ms": percentiles_ms(inside)}
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load_swap", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (default: random --model)")
    parser.add_argument("--model", default="zse-tiny")
    parser.add_argument("--index", type=Path, default=None, help="index served at the start (default: build one)")
    parser.add_argument("--gallery", type=Path, default=None,
                        help="gallery the job builds: folder or manifest (default: generated photos)")
    parser.add_argument("--photos", type=int, default=64, help="photos of each generated gallery")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--build-after", type=float, default=5.0, help="seconds into the measured load")
    parser.add_argument("--build-timeout", type=float, default=600.0)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--sketches", type=Path, default=None, help="folder of sketch images (default: generated)")
    parser.add_argument("--rerank-batch-size", type=int, default=64)
    parser.add_argument("--server-threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/load_swap.json"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import models
    from benchmarks.index_build import generate_gallery
    from benchmarks.server_throughput import build_index

    args = parse_args(argv)
    report = header("load_swap", argv)
    report.update(concurrency=args.concurrency, duration_s=args.duration, build_after_s=args.build_after,
                  k=args.k, shortlist=args.shortlist, server_threads=args.server_threads)
    with tempfile.TemporaryDirectory(prefix="sbir-load-swap-") as temporary:
        root = Path(temporary)
        (root / "state" / "indexes").mkdir(parents=True)
        checkpoint = args.checkpoint or models.save_checkpoint(models.build_model(args.model), root / "model.pt")
        index = args.index or build_index(root / "first", checkpoint, args.photos)
        if args.gallery is None:
            gallery = root / "data" / "gallery-new"
            generate_gallery(gallery, args.photos, 96)
            data_root = root / "data"
        else:
            gallery = args.gallery.resolve()
            data_root = gallery.parent
        report.update(checkpoint=str(args.checkpoint) if args.checkpoint else f"random {args.model}",
                      index=str(args.index) if args.index else f"generated, {args.photos} photos",
                      gallery=str(args.gallery) if args.gallery else f"generated, {args.photos} photos")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(index, checkpoint, port, root / "state", data_root, args)
        try:
            wait_ready(url, server)
            import httpx

            old_name = str(httpx.get(url + "/index", timeout=10).json()["name"])
            load_out = root / "load.json"
            started = time.time()
            load_process = subprocess.Popen(loadgen_command(url, args.concurrency, args, load_out))
            build = follow_build(url, str(gallery.relative_to(data_root)), started, args)
            load_status = load_process.wait()
            if load_status != 0:
                raise RuntimeError(f"the load generator exited with status {load_status}")
            load = json.loads(load_out.read_text())
        finally:
            stop_server(server)
            log_tail = (root / "state" / "server.log").read_text(errors="replace")[-2000:]
    # Times of the build relative to the start of the measured load, as the load's index answers are.
    zero = load["started_at_unix"]
    build_relative = relative_times(build, zero)
    problems = verdict(load, build, old_name)
    report.update(old_index=old_name, new_index=NEW_INDEX, load=load, build={**build, **build_relative},
                  phases=phases(load["answers"], build_relative), passed=not problems, problems=problems,
                  server_log_tail=log_tail)
    finish(report, args.out)
    latency = load["latency_ms"]
    print(f"{load['requests_per_s']:.2f} req/s, p50 {latency['p50']} ms, p99 {latency['p99']} ms, "
          f"statuses {load['status_counts']}, indexes {load['indexes']}, build {build.get('state')} "
          f"(queued at {build_relative.get('submitted_s')} s, served at {build_relative.get('served_s')} s)")
    return verdict_status(problems, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
