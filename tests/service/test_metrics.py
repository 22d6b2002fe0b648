"""The hand-written Prometheus exposition."""

from __future__ import annotations

import pytest

from service.metrics import MetricsRegistry


def test_histogram_buckets_are_cumulative_and_inclusive():
    registry = MetricsRegistry()
    histogram = registry.histogram("latency_seconds", "Latency.", ("route",), buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):
        histogram.observe(value, route="/x")
    lines = registry.render().splitlines()
    assert lines[:2] == ["# HELP latency_seconds Latency.", "# TYPE latency_seconds histogram"]
    assert lines[2:] == [
        'latency_seconds_bucket{route="/x",le="0.1"} 2',
        'latency_seconds_bucket{route="/x",le="1"} 3',
        'latency_seconds_bucket{route="/x",le="+Inf"} 4',
        'latency_seconds_sum{route="/x"} 2.65',
        'latency_seconds_count{route="/x"} 4',
    ]


def test_counter_label_values_are_escaped_and_checked():
    registry = MetricsRegistry()
    counter = registry.counter("things_total", "Things.", ("name",))
    counter.inc(name='a "quoted"\\path\nline')
    counter.inc(2, name="b")
    assert registry.render().splitlines()[2:] == [
        'things_total{name="a \\"quoted\\"\\\\path\\nline"} 1',
        'things_total{name="b"} 2',
    ]
    with pytest.raises(ValueError):
        counter.inc(other="x")
    with pytest.raises(ValueError):
        registry.counter("things_total", "again")


def test_gauge_reads_at_scrape_time():
    registry = MetricsRegistry()
    values = {"size": 3}
    registry.gauge("index_size", "Size.", lambda: [({}, values["size"])])
    assert registry.render().splitlines()[-1] == "index_size 3"
    values["size"] = 5
    assert registry.render().splitlines()[-1] == "index_size 5"
