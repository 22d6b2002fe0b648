"""The load-with-index-swap benchmark runs once, small: a real server, the load generator as a second
process, a build job swapped in during the load. Checks what it records (no request failed, answers
from both indexes in order, the job's timeline inside the load), never time."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import load_swap
from benchmarks.cli import BENCHMARKS


def test_an_index_swapped_in_under_load_fails_no_request(tmp_path: Path) -> None:
    out = tmp_path / "load_swap.json"
    argv = ["--photos", "12", "--concurrency", "2", "--duration", "30", "--warmup", "1", "--build-after", "2",
            "--shortlist", "8", "--k", "5", "--out", str(out)]
    status = load_swap.main(argv)
    report = json.loads(out.read_text())
    assert status == 0, report["problems"]
    assert report["passed"] and report["problems"] == []

    load, build = report["load"], report["build"]
    answered = load["requests_ok"]
    assert answered > 0 and load["status_counts"] == {"200": answered}
    assert load["failures"] == []
    old, new = load["indexes"][report["old_index"]], load["indexes"][load_swap.NEW_INDEX]
    assert old["count"] + new["count"] == answered  # every answer names one of the two indexes
    assert old["first_s"] <= new["first_s"]
    assert build["state"] == "succeeded"
    # The job was queued and its index served while the load ran; nothing answered from the new index
    # before the job that builds it was queued.
    assert 0 < build["submitted_s"] < build["finished_s"] <= build["served_s"] < load["duration_s"]
    assert new["first_s"] > build["submitted_s"]
    assert {"p50", "p99"} <= set(load["latency_ms"]) and load["requests_per_s"] > 0
    phases = report["phases"]
    assert sum(phase["latency_ms"]["count"] for phase in phases.values()) == answered
    assert phases["during_build"]["from_s"] == build["submitted_s"] and phases["after_swap"]["from_s"] == build["served_s"]


def test_a_failed_request_fails_the_verdict() -> None:
    load = {"status_counts": {"200": 10, "503": 1}, "failures": ["503: busy"], "duration_s": 5.0,
            "indexes": {"old": {"first_s": 0.1, "last_s": 2.0}, load_swap.NEW_INDEX: {"first_s": 2.1, "last_s": 5}}}
    build = {"state": "succeeded", "served_at_unix": 1.0}
    problems = load_swap.verdict(load, build, "old")
    assert len(problems) == 1 and "503" in problems[0]
    load["status_counts"] = {"200": 10}
    assert load_swap.verdict(load, build, "old") == []
    assert "never served" in load_swap.verdict(load, {"state": "succeeded"}, "old")[0]
    del load["indexes"][load_swap.NEW_INDEX]
    assert "both indexes" in load_swap.verdict(load, build, "old")[0]


def test_load_swap_is_a_registered_benchmark() -> None:
    assert BENCHMARKS["load_swap"] == "benchmarks.load_swap"
