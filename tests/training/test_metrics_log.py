"""The training metrics log (training.metrics_log)."""

from __future__ import annotations

import json

from training.metrics_log import METRICS_LOG, MetricsLog, flatten


def test_records_are_strict_json_lines_appended_across_runs(tmp_path):
    first = MetricsLog(tmp_path, enabled=True, tensorboard=False)
    first.write({"event": "train", "step": 1, "loss": float("nan"), "parts": {"triplet": float("inf")}})
    first.close()
    again = MetricsLog(tmp_path, enabled=True, tensorboard=False)  # a resumed run continues the file
    again.write({"event": "end", "step": 2})
    again.close()

    lines = (tmp_path / METRICS_LOG).read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]  # json.loads would accept NaN; check the text too
    assert "NaN" not in lines[0] and "Infinity" not in lines[0]
    assert [r["event"] for r in records] == ["train", "end"]
    assert records[0]["loss"] is None and records[0]["parts"] == {"triplet": None}
    assert all(isinstance(r["time"], float) for r in records)


def test_other_ranks_write_nothing(tmp_path):
    log = MetricsLog(tmp_path, enabled=False, tensorboard=True)
    log.write({"event": "train", "step": 1})
    log.close()
    assert not (tmp_path / METRICS_LOG).exists() and not (tmp_path / "tensorboard").exists()


def test_flatten_joins_nested_keys_as_tag_paths():
    record = {"step": 3, "metrics": {"map_all": 0.5, "p": {"100": 0.25}}, "loss": 1.0}
    assert flatten(record) == {"step": 3, "metrics/map_all": 0.5, "metrics/p/100": 0.25, "loss": 1.0}
