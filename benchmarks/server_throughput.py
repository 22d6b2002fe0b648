"""Server throughput: requests/s and latency of `/search` under concurrent clients, per re-ranking mode.

    python -m benchmarks.server_throughput [--checkpoint CKPT --index DIR] [--concurrency 1,4,8]
        [--duration 20] [--shortlist 100]

For each re-ranking mode (`SBIR_RERANK_MODE`: fp32, bf16, int8, ...) the real server (`sbir serve`,
uvicorn) is started as a subprocess on a free loopback port; then for each concurrency level the load generator
(`benchmarks.loadgen`) runs as a second process against each server in turn. Without `--index`, a small real index is
built first from generated photos with the checkpoint (a random `--model` when none is given). Client
and server share the machine's cores: the figures are for the whole box, as on a single-host deployment.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._report import finish, header

READY_TIMEOUT_S = 300.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT_S) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode} before it was ready")
        try:
            if httpx.get(url + "/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} was not ready after {timeout:.0f}s")


def launch_server(index: Path, checkpoint: Path, port: int, settings: dict[str, str], server_threads: int | None,
                  log: Path) -> subprocess.Popen[bytes]:
    """`sbir serve` of `index` on a loopback `port`, with `settings` (SBIR_* variables) added to this
    process's environment; output appended to `log`."""
    env = {**os.environ, **settings}
    if server_threads is not None:
        env["OMP_NUM_THREADS"] = str(server_threads)  # torch's intra-op threads in the server
    command = [sys.executable, "-m", "service.cli", "serve", "--index", str(index), "--checkpoint", str(checkpoint),
               "--port", str(port), "--log-level", "warning"]
    with open(log, "ab") as stream:
        return subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT)


def start_server(index: Path, checkpoint: Path, port: int, mode: str, args: argparse.Namespace,
                 log: Path) -> subprocess.Popen[bytes]:
    settings = dict(SBIR_RERANK_MODE=mode, SBIR_DEVICE=args.device,
                    SBIR_RERANK_BATCH_SIZE=str(args.rerank_batch_size), SBIR_ADMIN_TOKEN="",
                    SBIR_JOBS_DB=str(log.parent / f"jobs-{port}.sqlite3"))
    return launch_server(index, checkpoint, port, settings, args.server_threads, log)


def stop_server(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def loadgen_command(url: str, concurrency: int, args: argparse.Namespace, out: Path) -> list[str]:
    """The load generator as a second process: `args` gives duration, warmup, k, shortlist, sketches."""
    command = [sys.executable, "-m", "benchmarks.loadgen", "--url", url, "--concurrency", str(concurrency),
               "--duration", str(args.duration), "--warmup", str(args.warmup), "--k", str(args.k),
               "--shortlist", str(args.shortlist), "--out", str(out)]
    if args.sketches is not None:
        command += ["--sketches", str(args.sketches)]
    return command


def run_load(url: str, concurrency: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    subprocess.run(loadgen_command(url, concurrency, args, out), check=True)
    return dict(json.loads(out.read_text()))


def build_index(root: Path, checkpoint: Path, count: int) -> Path:
    import indexer
    from benchmarks.index_build import generate_gallery

    gallery = root / "gallery"
    generate_gallery(gallery, count, 96)
    return indexer.build(gallery, checkpoint, root / "index", tokens="fp16", device="cpu", num_workers=0,
                         progress=False)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=None, help="model checkpoint (default: random --model)")
    parser.add_argument("--model", default="zse-tiny")
    parser.add_argument("--index", type=Path, default=None, help="index directory (default: build one)")
    parser.add_argument("--photos", type=int, default=256, help="photos of the generated index")
    parser.add_argument("--concurrency", default="1,4,8", help="client counts, comma-separated")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--sketches", type=Path, default=None, help="folder of sketch images (default: generated)")
    parser.add_argument("--modes", default="fp32,bf16", help="re-ranking modes to compare (SBIR_RERANK_MODE)")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per level and setting (ABBA order)")
    parser.add_argument("--rerank-batch-size", type=int, default=64)
    parser.add_argument("--server-threads", type=int, default=None, help="OMP_NUM_THREADS of the server")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/server_throughput.json"))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    import models

    args = parse_args(argv)
    report = header("server_throughput", argv)
    levels = [int(value) for value in args.concurrency.split(",")]
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    report.update(k=args.k, shortlist=args.shortlist, duration_s=args.duration, server_threads=args.server_threads,
                  modes=modes, results=[])
    with tempfile.TemporaryDirectory(prefix="sbir-throughput-") as temporary:
        root = Path(temporary)
        checkpoint = args.checkpoint or models.save_checkpoint(models.build_model(args.model), root / "model.pt")
        index = args.index or build_index(root, checkpoint, args.photos)
        report.update(checkpoint=str(args.checkpoint) if args.checkpoint else f"random {args.model}",
                      index=str(args.index) if args.index else f"generated, {args.photos} photos")
        # One server per mode, all started first; the levels then alternate between them, so that a busy
        # spell of the (shared) machine does not fall on one mode only.
        servers: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
        try:
            for mode in modes:
                port = free_port()
                servers[mode] = (f"http://127.0.0.1:{port}",
                                 start_server(index, checkpoint, port, mode, args, root / "server.log"))
            for url, server in servers.values():
                wait_ready(url, server)
            for concurrency in levels:
                for repeat in range(args.repeats):
                    # ABBA order over repeats: a drift in the machine's load favours neither setting.
                    for number, mode in enumerate(modes if repeat % 2 == 0 else modes[::-1]):
                        url = servers[mode][0]
                        result = run_load(url, concurrency, args,
                                          root / f"load-{number}-{concurrency}-{repeat}.json")
                        result.update(mode=mode, repeat=repeat)
                        report["results"].append(result)
                        print(f"{mode} x{concurrency}: "
                              f"{result['requests_per_s']:.2f} req/s, p50 {result['latency_ms']['p50']} ms, "
                              f"p95 {result['latency_ms']['p95']} ms, statuses {result['status_counts']}")
        finally:
            for _, server in servers.values():
                stop_server(server)
        report["server_log_tail"] = (root / "server.log").read_text(errors="replace")[-2000:]
    by_level: dict[int, dict[str, list[float]]] = {}
    for result in report["results"]:
        by_level.setdefault(result["concurrency"], {}).setdefault(result["mode"], []).append(
            result["requests_per_s"])
    report["requests_per_s_mean"] = {str(level): {mode: round(sum(rates) / len(rates), 3)
                                                  for mode, rates in by_mode.items()}
                                     for level, by_mode in by_level.items()}
    first = modes[0]
    report["speedup_vs_first_mode"] = {level: {mode: round(rate / rates[first], 3) for mode, rate in rates.items()}
                                       for level, rates in report["requests_per_s_mean"].items() if rates.get(first)}
    finish(report, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
