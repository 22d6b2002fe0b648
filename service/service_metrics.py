"""What the service measures, and the middleware that times every request.

Built by `create_app` on each app's own `MetricsRegistry` (see service.metrics).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Counter, Histogram, MetricsRegistry

# Requests that matched no route share one label, so random paths cannot grow the series.
UNMATCHED_ROUTE = "<unmatched>"


@dataclass
class ServiceMetrics:
    registry: MetricsRegistry
    requests: Counter
    request_seconds: Histogram
    search_stage_seconds: Histogram
    search_results: Counter


def build_service_metrics(
    registry: MetricsRegistry,
    index_size: Callable[[], int | None],
    job_counts: Callable[[], dict[str, int]],
) -> ServiceMetrics:
    """Register the service's metrics; `index_size` and `job_counts` are read at scrape time."""

    def collect_index_size() -> Iterable[tuple[dict[str, str], float]]:
        size = index_size()
        return [] if size is None else [({}, float(size))]

    def collect_jobs() -> Iterable[tuple[dict[str, str], float]]:
        return [({"state": state}, float(count)) for state, count in job_counts().items()]

    registry.gauge("sbir_index_size", "Photos in the index being served.", collect_index_size)
    registry.gauge("sbir_jobs", "Jobs in the job store by state.", collect_jobs, ("state",))
    return ServiceMetrics(
        registry=registry,
        requests=registry.counter(
            "sbir_http_requests_total", "HTTP requests by method, route and status.", ("method", "route", "status")
        ),
        request_seconds=registry.histogram(
            "sbir_http_request_duration_seconds", "HTTP request latency by method and route.", ("method", "route")
        ),
        search_stage_seconds=registry.histogram(
            "sbir_search_stage_duration_seconds", "Time spent in each stage of POST /search.", ("stage",)
        ),
        search_results=registry.counter(
            "sbir_search_requests_total", "Searches served, by whether they were re-ranked.", ("reranked",)
        ),
    )


class RequestMetricsMiddleware:
    """Count and time every HTTP request under its route template (`/jobs/{job_id}`, not the id)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app dies before answering

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
            method = scope.get("method", "")
            self.metrics.requests.inc(method=method, route=route, status=str(status))
            self.metrics.request_seconds.observe(time.perf_counter() - started, method=method, route=route)
