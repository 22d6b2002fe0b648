"""`sbir bench NAME [ARGS...]`: run one benchmark (the same as `python -m benchmarks.NAME ARGS...`).

Registration is cheap: the benchmark module is imported only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import Any

# Benchmark name -> module with `main(argv) -> int`.
BENCHMARKS: dict[str, str] = {
    "search_latency": "benchmarks.search_latency",
    "rerank": "benchmarks.rerank",
    "fast_modes": "benchmarks.fast_modes",
    "token_codec": "benchmarks.token_codec",
    "quality_cost": "benchmarks.quality_cost",
    "server_throughput": "benchmarks.server_throughput",
    "index_build": "benchmarks.index_build",
    "loadgen": "benchmarks.loadgen",
    "load_swap": "benchmarks.load_swap",
    "replica_swap": "benchmarks.replica_swap",
    "scale_sim": "benchmarks.scale_sim",
    "explain": "benchmarks.explain",
    "fuzz_api": "benchmarks.fuzz_api",
    "upload_memory": "benchmarks.upload_memory",
    "gpu": "benchmarks.gpu",
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="run a benchmark; results go to benchmarks/results/NAME.json",
        description="Run one benchmark. Arguments after NAME go to it (`sbir bench rerank --help`).",
    )
    parser.add_argument("name", choices=sorted(BENCHMARKS), help="which benchmark")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the benchmark's own arguments")
    parser.set_defaults(handler=_run)


def run_benchmark(name: str, argv: Sequence[str]) -> int:
    module = importlib.import_module(BENCHMARKS[name])
    return int(module.main(list(argv)) or 0)


def _run(args: argparse.Namespace) -> int:
    return run_benchmark(args.name, args.arguments)
