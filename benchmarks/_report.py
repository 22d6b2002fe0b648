"""What every benchmark shares: percentiles, the run header, writing the JSON result."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._machine import machine_details


def load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: how busy the machine was (others' work slows a benchmark)."""
    if not hasattr(os, "getloadavg"):
        return None
    return [round(value, 2) for value in os.getloadavg()]


def header(name: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The start of a result: benchmark name, time, arguments (the process's when `argv` is None) and the
    load average at the start."""
    return {
        "benchmark": name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "load_average_at_start": load_average(),
    }


def percentiles_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50 / p95 / p99 / mean / min / max in milliseconds of a list of durations in seconds.

    p99 of fewer than 100 samples is close to the maximum; `count` says how many there were.
    """
    if not seconds:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "mean": None, "min": None, "max": None}
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {
        "count": len(values),
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "mean": round(float(values.mean()), 3),
        "min": round(float(values.min()), 3),
        "max": round(float(values.max()), 3),
    }


def finish(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """Add the machine (with the load at the end) and write `report` to `out` atomically."""
    from models.atomic import write_json_atomic

    report["load_average_at_end"] = load_average()
    report["machine"] = machine_details()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    return report


def relative_times(timeline: dict[str, Any], zero: float) -> dict[str, float]:
    """`timeline`'s `*_at_unix` times as `*_s` seconds after `zero` (a load's `started_at_unix`)."""
    return {key.replace("_at_unix", "_s"): round(value - zero, 3)
            for key, value in timeline.items() if key.endswith("_at_unix")}


def verdict_status(problems: Sequence[str], out: Path) -> int:
    """Print each problem of a pass/fail benchmark to stderr and where its report went; the exit status."""
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    print(f"wrote {out}")
    return 0 if not problems else 1


def set_threads(threads: int | None) -> int:
    """Pin torch's intra-op threads (None: leave torch's default); returns the number in use."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()
