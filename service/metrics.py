"""The metrics of one app, kept and exposed by `prometheus_client`.

A `MetricsRegistry` owns its own `prometheus_client.CollectorRegistry`; `create_app` builds one per
app and keeps it on `app.state`. Nothing is registered in prometheus_client's global default
registry, so two apps in one process (tests) never share numbers.

Counters and histograms take their label values as keyword arguments (`inc(route="/x")`,
`observe(0.2, stage="ann")`); gauges are read at scrape time from a function.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import prometheus_client
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# Seconds; spans a cached health check to a large re-rank on the CPU.
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# What `render()` writes: `generate_latest` gives the Prometheus text format 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

GaugeReader = Callable[[], Iterable[tuple[dict[str, str], float]]]


class Counter:
    """A counter; its exposed sample is `NAME_total` (give names ending in `_total`)."""

    def __init__(self, metric: prometheus_client.Counter) -> None:
        self._metric = metric

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add `amount`; ValueError when `labels` are not exactly the counter's label names."""
        (self._metric.labels(**labels) if labels else self._metric).inc(amount)


class Histogram:
    """A histogram; buckets are cumulative and inclusive (a value equal to a bound counts in it)."""

    def __init__(self, metric: prometheus_client.Histogram) -> None:
        self._metric = metric

    def observe(self, value: float, **labels: str) -> None:
        """Record `value`; ValueError when `labels` are not exactly the histogram's label names."""
        (self._metric.labels(**labels) if labels else self._metric).observe(value)


class _ScrapeTimeGauge(Collector):
    """A gauge whose samples come from `read() -> [(labels, value)]` at each scrape."""

    def __init__(self, name: str, help_text: str, read: GaugeReader, label_names: Sequence[str]) -> None:
        self.name, self.help_text, self.read, self.label_names = name, help_text, read, tuple(label_names)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.help_text, labels=self.label_names)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()  # registration needs the name only: `read` is not called

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for labels, value in self.read():
            if set(labels) != set(self.label_names):
                raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
            family.add_metric([str(labels[name]) for name in self.label_names], float(value))
        yield family


class MetricsRegistry:
    """The metrics of one app; `render()` gives the /metrics body. Registering a name twice is a ValueError."""

    def __init__(self) -> None:
        self.collector_registry = prometheus_client.CollectorRegistry()

    def counter(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> Counter:
        return Counter(prometheus_client.Counter(name, help_text, tuple(label_names),
                                                 registry=self.collector_registry))

    def histogram(self, name: str, help_text: str, label_names: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        return Histogram(prometheus_client.Histogram(name, help_text, tuple(label_names), buckets=tuple(buckets),
                                                     registry=self.collector_registry))

    def gauge(self, name: str, help_text: str, read: GaugeReader, label_names: Sequence[str] = ()) -> None:
        """Register a gauge read at scrape time: `read() -> [(labels, value)]`."""
        self.collector_registry.register(_ScrapeTimeGauge(name, help_text, read, label_names))

    def render(self) -> str:
        return prometheus_client.generate_latest(self.collector_registry).decode("utf-8")
