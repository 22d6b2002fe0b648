"""The replicas benchmark runs once, small: two real servers over one index directory, the load
generator round-robin over them as a second process, `sbir index add` republishing the directory from
a third during the load. Checks what it records (no request failed, each replica answered from the
old generation and then the new one, every answer counted once), never time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import replica_swap
from benchmarks.cli import BENCHMARKS


def test_two_replicas_pick_up_a_republished_index_under_round_robin_load(tmp_path: Path) -> None:
    out = tmp_path / "replica_swap.json"
    # One client and one torch thread per replica leave a core to `sbir index add`, so that it publishes
    # well inside the load on a busy machine.
    argv = ["--photos", "12", "--add-photos", "4", "--replicas", "2", "--concurrency", "1", "--server-threads", "1",
            "--duration", "40", "--warmup", "1", "--swap-after", "1", "--watch-s", "0.2", "--shortlist", "8",
            "--k", "5", "--scratch", str(tmp_path / "scratch"), "--out", str(out)]
    status = replica_swap.main(argv)
    report = json.loads(out.read_text())
    assert status == 0, report["problems"]
    assert report["passed"] and report["problems"] == []

    load, swap, replicas = report["load"], report["swap"], report["replicas"]
    answered = load["requests_ok"]
    assert answered > 0 and load["status_counts"] == {"200": answered} and load["failures"] == []
    assert swap["returncode"] == 0 and swap["command"][:3] == ["sbir", "index", "add"]
    assert swap["started_s"] < swap["published_s"] < load["duration_s"]

    old = (report["served_before"][0]["name"], report["served_before"][0]["size"])
    new = (report["served_after"][0]["name"], report["served_after"][0]["size"])
    assert new == (old[0], old[1] + 4)  # the same directory, four photos more
    assert len(replicas) == 2 and len({replica["url"] for replica in replicas}) == 2
    # Round robin: request i went to replica i mod 2, so their counts differ by at most one.
    assert abs(replicas[0]["requests"] - replicas[1]["requests"]) <= 1
    assert sum(replica["requests"] for replica in replicas) == answered
    for replica in replicas:
        assert replica["failed"] == 0 and replica["status_counts"] == {"200": replica["requests_ok"]}
        assert (replica["served_before"]["name"], replica["served_before"]["size"]) == old
        assert (replica["served_after"]["name"], replica["served_after"]["size"]) == new
        first, second = replica["generations"]
        assert [(first["name"], first["size"]), (second["name"], second["size"])] == [old, new]
        assert first["count"] > 0 and second["count"] > 0
        assert first["count"] + second["count"] == replica["requests_ok"]  # every answer from one of the two
        # In order: nothing sent after the first answer from the new generation came from the old one.
        assert first["first_s"] < second["first_s"] and first["last_sent_s"] <= second["first_s"]
        assert second["first_s"] > swap["started_s"]
        assert replica["first_new_generation_s"] == second["first_s"]
        assert {"p50", "p99"} <= set(replica["latency_ms"]) and replica["requests_per_s"] > 0
    assert report["load_average_1m_at_end_of_load"] is None or report["load_average_1m_at_end_of_load"] >= 0
    assert not any((tmp_path / "scratch").iterdir())  # the served copy is removed afterwards


def _replica(url: str, generations: list[tuple[int, float, float, float]]) -> dict[str, Any]:
    """A loadgen replica record answering 200 from generations of (size, first_s, last_s, last_sent_s)."""
    records = [{"name": "shared", "size": size, "count": 5, "first_s": first, "last_s": last, "first_sent_s": first,
                "last_sent_s": sent} for size, first, last, sent in generations]
    answered = 5 * len(records)
    return {"url": url, "requests_ok": answered, "status_counts": {"200": answered}, "generations": records}


def test_the_verdict_names_what_went_wrong() -> None:
    before = [{"url": "a", "name": "shared", "size": 10}, {"url": "b", "name": "shared", "size": 10}]
    after = [{"url": "a", "name": "shared", "size": 14}, {"url": "b", "name": "shared", "size": 14}]
    swap = {"returncode": 0, "started_s": 1.0, "published_s": 4.0}

    def load(*replicas: dict[str, Any]) -> dict[str, Any]:
        total = sum(replica["requests_ok"] for replica in replicas)
        return {"status_counts": {"200": total}, "failures": [], "duration_s": 10.0, "replicas": list(replicas)}

    good = load(_replica("a", [(10, 0.1, 4.2, 4.1), (14, 4.3, 9.9, 9.8)]),
                _replica("b", [(10, 0.2, 4.0, 3.9), (14, 4.4, 9.8, 9.7)]))
    assert replica_swap.verdict(good, swap, before, after) == []

    failed = {**good, "status_counts": {"200": 20, "503": 1}, "failures": ["503: not ready"]}
    assert any("503" in problem for problem in replica_swap.verdict(failed, swap, before, after))
    stale = [after[0], before[1]]
    assert any("still serves" in problem for problem in replica_swap.verdict(good, swap, before, stale))
    one_generation = load(_replica("a", [(10, 0.1, 9.9, 9.8)]), good["replicas"][1])
    assert any("answered from [('shared', 10)]" in problem
               for problem in replica_swap.verdict(one_generation, swap, before, after))
    backwards = load(_replica("a", [(10, 0.1, 6.0, 5.9), (14, 4.3, 9.9, 9.8)]), good["replicas"][1])
    assert any("sent at 5.9 s from the old generation" in problem
               for problem in replica_swap.verdict(backwards, swap, before, after))
    late = {**swap, "published_s": 10.5}
    assert any("after the load ended" in problem for problem in replica_swap.verdict(good, late, before, after))
    assert any("index add failed" in problem
               for problem in replica_swap.verdict(good, {**swap, "returncode": 2}, before, after))


def test_replica_swap_is_a_registered_benchmark() -> None:
    assert BENCHMARKS["replica_swap"] == "benchmarks.replica_swap"
