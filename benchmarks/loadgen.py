"""Load generator: concurrent clients posting sketches to `/search` for a fixed time (httpx, asyncio).

    python -m benchmarks.loadgen --url http://127.0.0.1:8000 --concurrency 8 --duration 20 --out load.json

Runs as its own process, so that the client's work is not counted in the server's. Each of
`--concurrency` clients sends its next request as soon as the previous answer arrived (closed loop).
Reports requests/s of answered requests, client-side latency percentiles, status counts, the
server's own stage timings (`timings_ms`) of successful answers, which index answered (name, count,
first and last answer in seconds from the start of the measured load: shows an index swap during the
load) and the first few failures verbatim.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._report import finish, header, load_average, percentiles_ms

STAGES = ("decode", "embed", "ann", "rerank", "total")


MAX_FAILURES_KEPT = 5


def _new_record(started: float) -> dict[str, Any]:
    return {"started": started, "status": {}, "latency": [], "server": {stage: [] for stage in STAGES},
            "indexes": {}, "failures": [], "answers": []}


async def _client(client: Any, url: str, sketches: Sequence[bytes], params: dict[str, Any], deadline: float,
                  offset: int, record: dict[str, Any]) -> None:
    number = offset
    while time.perf_counter() < deadline:
        data = sketches[number % len(sketches)]
        number += 1
        started = time.perf_counter()
        try:
            response = await client.post(url, params=params, files={"sketch": ("sketch.png", data, "image/png")})
            status = str(response.status_code)
        except Exception as error:  # a refused or reset connection is a result to count, not a crash
            status = type(error).__name__
            response = None
            if len(record["failures"]) < MAX_FAILURES_KEPT:
                record["failures"].append(f"{status}: {error}")
        finished = time.perf_counter()
        elapsed = finished - started
        record["status"][status] = record["status"].get(status, 0) + 1
        if response is not None and response.status_code != 200 and len(record["failures"]) < MAX_FAILURES_KEPT:
            record["failures"].append(f"{status}: {response.text[:300]}")
        if response is not None and response.status_code == 200:
            record["latency"].append(elapsed)
            body = response.json()
            timings = body.get("timings_ms", {})
            for stage in STAGES:
                if stage in timings:
                    record["server"][stage].append(timings[stage] / 1000.0)
            name = str(body.get("index", {}).get("name"))
            seen = record["indexes"].setdefault(name, {"count": 0, "first_s": None, "last_s": None})
            at = round(finished - record["started"], 3)
            seen["count"] += 1
            seen["first_s"] = at if seen["first_s"] is None else seen["first_s"]
            seen["last_s"] = at
            record["answers"].append([at, round(elapsed * 1000.0, 3)])


async def generate(url: str, sketches: Sequence[bytes], concurrency: int, duration: float,
                   params: dict[str, Any], warmup: float = 0.0) -> dict[str, Any]:
    """Closed-loop load for `duration` seconds (after `warmup` seconds whose answers are dropped)."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
        if warmup > 0:
            scratch = _new_record(time.perf_counter())
            deadline = time.perf_counter() + warmup
            await asyncio.gather(*(_client(client, url, sketches, params, deadline, n, scratch)
                                   for n in range(concurrency)))
        started = time.perf_counter()
        record = _new_record(started)
        deadline = started + duration
        await asyncio.gather(*(_client(client, url, sketches, params, deadline, n, record)
                               for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    answered = len(record["latency"])
    return {
        "concurrency": concurrency,
        "duration_s": round(elapsed, 3),
        "requests_ok": answered,
        "requests_per_s": round(answered / elapsed, 3),
        "status_counts": record["status"],
        "latency_ms": percentiles_ms(record["latency"]),
        "server_stages_ms": {stage: percentiles_ms(values) for stage, values in record["server"].items()},
        "indexes": record["indexes"],
        "failures": record["failures"],
        # [seconds from the start of the measured load at the answer, latency ms] of every 200 answer.
        "answers": sorted(record["answers"]),
        "started_at_unix": round(time.time() - elapsed, 3),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--sketches", type=Path, default=None, help="folder of sketch images (default: generated)")
    parser.add_argument("--count", type=int, default=32, help="distinct sketches")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON (default: stdout)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.search_latency import folder_sketches, synthetic_sketches

    args = parse_args(argv)
    sketches = folder_sketches(args.sketches, args.count) if args.sketches else synthetic_sketches(args.count, seed=7)
    report = header("loadgen", argv)
    params = {"k": args.k, "shortlist": args.shortlist}
    report.update(asyncio.run(generate(args.url.rstrip("/") + "/search", sketches, args.concurrency, args.duration,
                                       params, args.warmup)))
    report.update(url=args.url, params=params)
    if args.out is None:
        report["load_average_at_end"] = load_average()
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        finish(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
