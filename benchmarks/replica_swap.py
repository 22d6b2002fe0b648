"""Replicas over one index directory: `/search` round-robin over N `sbir serve` processes while an
operator republishes the directory they all serve.

    python -m benchmarks.replica_swap [--checkpoint CKPT --index DIR --add-gallery DIR] [--replicas 2]
        [--concurrency 4] [--duration 60] [--swap-after 10] [--watch-s 0.5] [--scratch DIR]

`--index` (default: an index built here from generated photos) is copied into a scratch folder
(`--scratch`, default the system's temporary folder; removed afterwards), so the index given is never
changed. N real servers (`sbir serve`, uvicorn) start as subprocesses on free loopback ports, all
serving that one copy, as replicas on shared storage would, each checking its manifest every
`--watch-s` seconds (`SBIR_INDEX_WATCH_S`). The load generator (`benchmarks.loadgen`) runs as a second
process for `--duration` seconds, sending request i to replica i mod N. `--swap-after` seconds into
the load, `sbir index add` runs as a separate process and appends `--add-gallery` (default: other
generated photos) to the directory, which it republishes atomically (`indexer.publish`); the
replicas pick the new generation up by themselves. Answers name their generation: the index's name
stays and its photo count (`index.size` of each answer) grows.

The run passes when every request to every replica was answered 200, the add published during the
load, and each replica answered from the old generation, then from the new one and from nothing
else, in that order: no request sent after a replica's first answer from the new generation was
answered from the old one, and after the load every replica's `GET /index` names the new one.
Writes `benchmarks/results/replica_swap.json`; exits 1 when the run did not pass, naming why.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._report import finish, header, load_average, relative_times, verdict_status
from benchmarks.server_throughput import free_port, launch_server, loadgen_command, stop_server, wait_ready

PUBLISH_POLL_S = 0.05


def start_replica(index: Path, checkpoint: Path, port: int, state: Path,
                  args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """One replica: no admin endpoints, its own job store, the index watcher at `--watch-s`."""
    settings = dict(SBIR_DEVICE=args.device, SBIR_ADMIN_TOKEN="", SBIR_INDEX_WATCH_S=str(args.watch_s),
                    SBIR_JOBS_DB=str(state / f"jobs-{port}.sqlite3"),
                    SBIR_RERANK_BATCH_SIZE=str(args.rerank_batch_size))
    return launch_server(index, checkpoint, port, settings, args.server_threads, state / f"server-{port}.log")


def served(urls: Sequence[str]) -> list[dict[str, Any]]:
    """Name, photo count and manifest time of the index each replica serves (`GET /index`)."""
    import httpx

    out: list[dict[str, Any]] = []
    for url in urls:
        try:
            body = httpx.get(url + "/index", timeout=30).json()
        except (httpx.HTTPError, ValueError) as error:  # a replica that stopped answering: the verdict says so
            out.append({"url": url, "name": None, "size": None, "error": f"{type(error).__name__}: {error}"})
            continue
        out.append({"url": url, "name": body.get("name"), "size": body.get("size"),
                    "updated_at": (body.get("manifest") or {}).get("updated_at")})
    return out


def republish(directory: Path, gallery: Path, checkpoint: Path, started_load: float, log: Path,
              args: argparse.Namespace) -> dict[str, Any]:
    """`--swap-after` s into the load, run `sbir index add DIRECTORY --gallery ...` as its own process (an
    operator on shared storage); note when the directory's manifest changed (the publish) and when the
    command ended."""
    from indexer.manifest import manifest_signature

    time.sleep(max(0.0, started_load + args.warmup + args.swap_after - time.time()))
    command = [sys.executable, "-m", "service.cli", "index", "add", str(directory), "--gallery", str(gallery),
               "--checkpoint", str(checkpoint), "--device", args.device, "--no-progress"]
    before = manifest_signature(directory)
    timeline: dict[str, Any] = {"command": ["sbir", *command[3:]], "started_at_unix": round(time.time(), 3)}
    with open(log, "ab") as stream:
        adding = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
        deadline = time.time() + args.add_timeout
        while time.time() < deadline:
            if "published_at_unix" not in timeline and manifest_signature(directory) not in (None, before):
                timeline["published_at_unix"] = round(time.time(), 3)
            if adding.poll() is not None:
                break
            time.sleep(PUBLISH_POLL_S)
        else:
            adding.kill()
            adding.wait()
            timeline["timed_out"] = True
    if "published_at_unix" not in timeline and manifest_signature(directory) not in (None, before):
        timeline["published_at_unix"] = round(time.time(), 3)  # between the last poll and the exit
    timeline.update(ended_at_unix=round(time.time(), 3), returncode=adding.returncode,
                    output_tail=log.read_text(errors="replace")[-1500:])
    return timeline


def replica_summaries(load: dict[str, Any], before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]],
                      published_s: float | None) -> list[dict[str, Any]]:
    """Per replica: counts, latency, requests/s, the generations it answered from and how long after
    the publish it first answered from the new one."""
    out = []
    for replica, old, new in zip(load["replicas"], before, after, strict=True):
        requests = sum(replica["status_counts"].values())
        first_new = next((generation["first_s"] for generation in replica["generations"]
                          if (generation["name"], generation["size"]) == (new["name"], new["size"])), None)
        out.append({
            "url": replica["url"], "requests": requests, "requests_ok": replica["requests_ok"],
            "failed": requests - int(replica["status_counts"].get("200", 0)),
            "status_counts": replica["status_counts"], "requests_per_s": replica["requests_per_s"],
            "latency_ms": replica["latency_ms"], "generations": replica["generations"],
            "served_before": old, "served_after": new, "first_new_generation_s": first_new,
            "new_generation_after_publish_s": None if first_new is None or published_s is None
            else round(first_new - published_s, 3),
        })
    return out


def verdict(load: dict[str, Any], swap: dict[str, Any], before: Sequence[dict[str, Any]],
            after: Sequence[dict[str, Any]]) -> list[str]:
    """Why the run did not pass (empty: it passed). `swap` times are seconds from the start of the load;
    `before` / `after` are what each replica's `GET /index` said before and after the load."""
    problems = []
    failed = {status: count for status, count in load["status_counts"].items() if status != "200"}
    if failed:
        problems.append(f"failed requests during the load: {failed} (first: {load['failures'][:2]})")
    if swap.get("returncode") != 0:
        problems.append(f"sbir index add failed (status {swap.get('returncode')}): {swap.get('output_tail', '')[-300:]}")
    if swap.get("published_s") is None:
        problems.append("the index directory was never republished")
    elif swap["published_s"] >= load["duration_s"]:
        problems.append(f"the index was republished at {swap['published_s']} s, after the load ended")
    replicas = load.get("replicas", [])
    if sum(sum(replica["status_counts"].values()) for replica in replicas) != sum(load["status_counts"].values()):
        problems.append("the replicas' request counts do not add up to the load's")
    if not before or len({(old["name"], old["size"]) for old in before}) != 1:
        problems.append(f"the replicas did not all serve one index at the start: {list(before)}")
        return problems
    if len({(new["name"], new["size"]) for new in after}) != 1:
        problems.append(f"the replicas do not all serve one index after the load: {list(after)}")
    old = (before[0]["name"], before[0]["size"])
    for number, (replica, new_served) in enumerate(zip(replicas, after, strict=True)):
        new = (new_served["name"], new_served["size"])
        seen = [(generation["name"], generation["size"]) for generation in replica["generations"]]
        where = f"replica {number} ({replica['url']})"
        if new == old:
            problems.append(f"{where} still serves {old} after the load")
            continue
        if seen != [old, new]:
            problems.append(f"{where} answered from {seen}, not from the old {old} and then the new {new}")
            continue
        first, second = replica["generations"]
        if first["count"] + second["count"] != replica["requests_ok"]:
            problems.append(f"{where}: {first['count']} + {second['count']} answers from the two generations, "
                            f"{replica['requests_ok']} answered")
        # A swap is one way: once a replica has answered from the new generation, a request sent to it
        # later cannot get the old one (a request sent earlier may: it keeps the index it started with).
        if first["last_sent_s"] > second["first_s"]:
            problems.append(f"{where} answered a request sent at {first['last_sent_s']} s from the old generation, "
                            f"after its first answer from the new one at {second['first_s']} s")
        if second["first_s"] < swap.get("started_s", float("inf")):
            problems.append(f"{where} answered from the new generation at {second['first_s']} s, before "
                            f"sbir index add started at {swap.get('started_s')} s")
    return problems


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replica_swap", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (default: random --model)")
    parser.add_argument("--model", default="zse-tiny")
    parser.add_argument("--index", type=Path, default=None,
                        help="index the replicas serve; a copy of it is served and republished (default: build one)")
    parser.add_argument("--add-gallery", type=Path, default=None,
                        help="photos `sbir index add` appends: folder or manifest (default: generated photos)")
    parser.add_argument("--photos", type=int, default=64, help="photos of the generated index")
    parser.add_argument("--add-photos", type=int, default=16, help="photos of the generated --add-gallery")
    parser.add_argument("--replicas", type=int, default=2, help="sbir serve processes over the one directory")
    parser.add_argument("--concurrency", type=int, default=4, help="clients, spread round robin over the replicas")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--swap-after", type=float, default=10.0, help="seconds into the measured load")
    parser.add_argument("--add-timeout", type=float, default=600.0)
    parser.add_argument("--watch-s", type=float, default=0.5, help="SBIR_INDEX_WATCH_S of the replicas")
    parser.add_argument("--scratch", type=Path, default=None,
                        help="folder for the served copy of the index (default: the system's temporary folder)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--sketches", type=Path, default=None, help="folder of sketch images (default: generated)")
    parser.add_argument("--rerank-batch-size", type=int, default=32)
    parser.add_argument("--server-threads", type=int, default=None, help="OMP_NUM_THREADS of each replica")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/replica_swap.json"))
    args = parser.parse_args(argv)
    if args.replicas < 1:
        parser.error("--replicas must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import models
    from benchmarks.index_build import generate_gallery
    from benchmarks.server_throughput import build_index

    args = parse_args(argv)
    report = header("replica_swap", argv)
    report.update(replicas=args.replicas, concurrency=args.concurrency, duration_s=args.duration,
                  swap_after_s=args.swap_after, watch_s=args.watch_s, k=args.k, shortlist=args.shortlist,
                  server_threads=args.server_threads, device=args.device)
    if args.scratch is not None:
        args.scratch.mkdir(parents=True, exist_ok=True)
    setup: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="sbir-replica-swap-", dir=args.scratch) as temporary:
        root = Path(temporary)
        began = time.perf_counter()
        state = root / "state"
        state.mkdir()
        checkpoint = args.checkpoint or models.save_checkpoint(models.build_model(args.model), root / "model.pt")
        source = args.index or build_index(root / "first", checkpoint, args.photos)
        # The replicas' shared directory: a copy, in a folder of its own (its parent holds the writer's lock).
        directory = root / "shared" / source.name
        shutil.copytree(source, directory)
        setup["index_s"] = round(time.perf_counter() - began, 3)  # built (or given) and copied
        gallery = args.add_gallery
        if gallery is None:
            gallery = root / "new-photos"
            generate_gallery(gallery, args.add_photos, 96)
        report.update(checkpoint=str(args.checkpoint) if args.checkpoint else f"random {args.model}",
                      index=str(args.index) if args.index else f"generated, {args.photos} photos",
                      served_copy=str(directory),
                      add_gallery=str(args.add_gallery) if args.add_gallery else f"generated, {args.add_photos} photos")
        ports = [free_port() for _ in range(args.replicas)]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        servers: list[subprocess.Popen[bytes]] = []
        try:
            began = time.perf_counter()
            servers = [start_replica(directory, checkpoint, port, state, args) for port in ports]
            for url, server in zip(urls, servers, strict=True):
                wait_ready(url, server)
            setup["replicas_ready_s"] = round(time.perf_counter() - began, 3)  # all started at once
            before = served(urls)
            load_out = root / "load.json"
            command = loadgen_command(urls[0], args.concurrency, args, load_out)
            for url in urls[1:]:
                command += ["--url", url]
            started = time.time()
            load_process = subprocess.Popen(command)
            swap = republish(directory, gallery, checkpoint, started, state / "index-add.log", args)
            load_status = load_process.wait()
            if load_status != 0:
                raise RuntimeError(f"the load generator exited with status {load_status}")
            load = json.loads(load_out.read_text())
            load_average_1m = load_average()
            setup["load_started_after_launch_s"] = round(load["started_at_unix"] - started, 3)  # incl. warmup
            after = served(urls)
        finally:
            for server in servers:
                stop_server(server)
            log_tails = {f"server-{port}": (state / f"server-{port}.log").read_text(errors="replace")[-1500:]
                         for port in ports if (state / f"server-{port}.log").is_file()}
    # Times of the add relative to the start of the measured load, as the load's answers are.
    zero = load["started_at_unix"]
    swap.update(relative_times(swap, zero))
    replicas = replica_summaries(load, before, after, swap.get("published_s"))
    problems = verdict(load, swap, before, after)
    load_summary = {key: value for key, value in load.items() if key not in ("answers", "replicas")}
    report.update(setup=setup, served_before=before, served_after=after, swap=swap, replicas=replicas, load=load_summary,
                  load_average_1m_at_end_of_load=None if load_average_1m is None else load_average_1m[0],
                  passed=not problems, problems=problems, server_log_tails=log_tails)
    finish(report, args.out)
    latency = load["latency_ms"]
    print(f"{args.replicas} replicas: {load['requests_per_s']:.2f} req/s, p50 {latency['p50']} ms, "
          f"p99 {latency['p99']} ms, statuses {load['status_counts']}; index add published at "
          f"{swap.get('published_s')} s (started at {swap.get('started_s')} s)")
    for replica in replicas:
        print(f"  {replica['url']}: {replica['requests']} requests, {replica['failed']} failed, "
              f"p50 {replica['latency_ms']['p50']} ms, p99 {replica['latency_ms']['p99']} ms, "
              f"new generation {replica['new_generation_after_publish_s']} s after the publish")
    return verdict_status(problems, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
