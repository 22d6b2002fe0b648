"""Prometheus text exposition (format 0.0.4), written by hand: counters, gauges, histograms.

A `MetricsRegistry` lives on `app.state`; nothing is registered globally, so two apps in one
process (tests) never share numbers.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable, Sequence

# Seconds; spans a cached health check to a large re-rank on the CPU.
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in labels) + "}"


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str]) -> None:
        self.name = name
        self.help_text = help_text
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple((name, str(labels[name])) for name in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_format_labels(key)} {_format_value(value)}" for key, value in items]


class Gauge(_Metric):
    """A gauge whose values are read at scrape time from `collect() -> [(labels, value)]`."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, collect: Callable[[], Iterable[tuple[dict[str, str], float]]],
                 label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._collect = collect

    def samples(self) -> list[str]:
        rows = [(self._key(labels), value) for labels, value in self._collect()]
        return [f"{self.name}{_format_labels(key)} {_format_value(value)}" for key, value in sorted(rows)]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = (),
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(sorted(buckets))
        # Per label set: non-cumulative bucket counts (+Inf last), sum, count.
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        slot = bisect.bisect_left(self.buckets, value)  # le is inclusive: value == bound lands in it
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[slot] += 1
            total[0] += value

    def samples(self) -> list[str]:
        lines = []
        with self._lock:
            series = sorted((key, (list(counts), total[0])) for key, (counts, total) in self._series.items())
        for key, (counts, total) in series:
            cumulative = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                cumulative += count
                bucket_labels = (*key, ("le", _format_value(bound)))
                lines.append(f"{self.name}_bucket{_format_labels(bucket_labels)} {cumulative}")
            lines.append(f"{self.name}_sum{_format_labels(key)} {_format_value(total)}")
            lines.append(f"{self.name}_count{_format_labels(key)} {cumulative}")
        return lines


class MetricsRegistry:
    """The metrics of one app; `render()` gives the /metrics body."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> _Metric:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help_text, label_names))  # type: ignore[return-value]

    def histogram(self, name: str, help_text: str, label_names: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        return self._add(Histogram(name, help_text, label_names, buckets))  # type: ignore[return-value]

    def gauge(self, name: str, help_text: str, collect: Callable[[], Iterable[tuple[dict[str, str], float]]],
              label_names: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help_text, collect, label_names))  # type: ignore[return-value]

    def render(self) -> str:
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.header())
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
