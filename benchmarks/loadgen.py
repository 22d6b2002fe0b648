"""Load generator: concurrent clients posting sketches to `/search` for a fixed time (httpx, asyncio).

    python -m benchmarks.loadgen --url http://127.0.0.1:8000 --concurrency 8 --duration 20 --out load.json
    python -m benchmarks.loadgen --url http://127.0.0.1:8001 --url http://127.0.0.1:8002 ...  # replicas

Runs as its own process, so that the client's work is not counted in the server's. Each of
`--concurrency` clients sends its next request as soon as the previous answer arrived (closed loop).
With several `--url`s the client is a round-robin balancer: the load's i-th request goes to URL
i mod N. Reports requests/s of answered requests, client-side latency percentiles, status counts, the
server's own stage timings (`timings_ms`) of successful answers, which index answered (name, count,
first and last answer in seconds from the start of the measured load: shows an index swap during the
load) and the first few failures verbatim; and the same per URL (`replicas`), with the generations
of the index each one answered from (name and photo count, which a republished index changes).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks._report import finish, header, load_average, percentiles_ms

STAGES = ("decode", "embed", "ann", "rerank", "total")


MAX_FAILURES_KEPT = 5


def _new_record(started: float, replicas: int = 1) -> dict[str, Any]:
    return {"started": started, "status": {}, "latency": [], "server": {stage: [] for stage in STAGES},
            "indexes": {}, "failures": [], "answers": [],
            "replicas": [{"status": {}, "latency": [], "generations": {}} for _ in range(replicas)]}


def _seen(table: dict[Any, dict[str, Any]], key: Any, at: float) -> dict[str, Any]:
    """Count one answer under `key`, with its first and last time (answers arrive in time order)."""
    seen = table.setdefault(key, {"count": 0, "first_s": at, "last_s": at})
    seen["count"] += 1
    seen["last_s"] = at
    return seen


async def _client(client: Any, urls: Sequence[str], sketches: Sequence[bytes], params: dict[str, Any],
                  deadline: float, offset: int, route: Iterator[int], record: dict[str, Any]) -> None:
    number = offset
    while time.perf_counter() < deadline:
        data = sketches[number % len(sketches)]
        number += 1
        replica = next(route) % len(urls)  # shared by all clients: the load's i-th request goes to URL i mod N
        part = record["replicas"][replica]
        where = f"{urls[replica]} " if len(urls) > 1 else ""  # which replica failed, when there are several
        started = time.perf_counter()
        try:
            response = await client.post(urls[replica], params=params,
                                          files={"sketch": ("sketch.png", data, "image/png")})
            status = str(response.status_code)
        except Exception as error:  # a refused or reset connection is a result to count, not a crash
            status = type(error).__name__
            response = None
            if len(record["failures"]) < MAX_FAILURES_KEPT:
                record["failures"].append(f"{where}{status}: {error}")
        finished = time.perf_counter()
        elapsed = finished - started
        for counts in (record["status"], part["status"]):
            counts[status] = counts.get(status, 0) + 1
        if response is not None and response.status_code != 200 and len(record["failures"]) < MAX_FAILURES_KEPT:
            record["failures"].append(f"{where}{status}: {response.text[:300]}")
        if response is not None and response.status_code == 200:
            record["latency"].append(elapsed)
            part["latency"].append(elapsed)
            body = response.json()
            timings = body.get("timings_ms", {})
            for stage in STAGES:
                if stage in timings:
                    record["server"][stage].append(timings[stage] / 1000.0)
            index = body.get("index", {})
            name = str(index.get("name"))
            at = round(finished - record["started"], 3)
            sent = round(started - record["started"], 3)
            _seen(record["indexes"], name, at)
            # A republished index keeps its name; its photo count tells the generations apart.
            generation = _seen(part["generations"], (name, index.get("size")), at)
            generation["first_sent_s"] = min(generation.get("first_sent_s", sent), sent)
            generation["last_sent_s"] = max(generation.get("last_sent_s", sent), sent)
            record["answers"].append([at, round(elapsed * 1000.0, 3)])


def _replica_summary(url: str, part: dict[str, Any], elapsed: float) -> dict[str, Any]:
    answered = len(part["latency"])
    generations = [{"name": name, "size": size, **seen} for (name, size), seen in part["generations"].items()]
    return {"url": url, "requests_ok": answered, "requests_per_s": round(answered / elapsed, 3),
            "status_counts": part["status"], "latency_ms": percentiles_ms(part["latency"]),
            # In the order each generation first answered; times in seconds from the start of the load.
            "generations": sorted(generations, key=lambda generation: generation["first_s"])}


async def generate(urls: str | Sequence[str], sketches: Sequence[bytes], concurrency: int, duration: float,
                   params: dict[str, Any], warmup: float = 0.0) -> dict[str, Any]:
    """Closed-loop load for `duration` seconds (after `warmup` seconds whose answers are dropped) on the
    `/search` URL `urls`, or round-robin over several."""
    import httpx

    targets = [urls] if isinstance(urls, str) else list(urls)
    route = itertools.count()
    # Up to `concurrency` kept-alive connections to each URL: round robin never waits for a connection.
    connections = concurrency * len(targets)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(timeout=120.0, limits=limits) as client:
        if warmup > 0:
            scratch = _new_record(time.perf_counter(), len(targets))
            deadline = time.perf_counter() + warmup
            await asyncio.gather(*(_client(client, targets, sketches, params, deadline, n, route, scratch)
                                   for n in range(concurrency)))
        started = time.perf_counter()
        record = _new_record(started, len(targets))
        deadline = started + duration
        route = itertools.count()  # the measured load's first request goes to the first URL
        await asyncio.gather(*(_client(client, targets, sketches, params, deadline, n, route, record)
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
        "replicas": [_replica_summary(url, part, elapsed)
                     for url, part in zip(targets, record["replicas"], strict=True)],
        "started_at_unix": round(time.time() - elapsed, 3),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--url", action="append", default=None,
                        help="server base URL (default http://127.0.0.1:8000); repeat it for replicas, "
                             "which get the requests in turn (round robin)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--sketches", type=Path, default=None, help="folder of sketch images (default: generated)")
    parser.add_argument("--count", type=int, default=32, help="distinct sketches")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON (default: stdout)")
    args = parser.parse_args(argv)
    args.url = args.url or ["http://127.0.0.1:8000"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.search_latency import folder_sketches, synthetic_sketches

    args = parse_args(argv)
    sketches = folder_sketches(args.sketches, args.count) if args.sketches else synthetic_sketches(args.count, seed=7)
    report = header("loadgen", argv)
    params = {"k": args.k, "shortlist": args.shortlist}
    searches = [url.rstrip("/") + "/search" for url in args.url]
    report.update(asyncio.run(generate(searches, sketches, args.concurrency, args.duration, params, args.warmup)))
    report.update(url=args.url[0], urls=args.url, params=params)
    if args.out is None:
        report["load_average_at_end"] = load_average()
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        finish(report, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
