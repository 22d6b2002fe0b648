"""What the service measures, and the middleware that times every request.

Built by `create_app` on each app's own `MetricsRegistry` (see service.metrics, on prometheus_client).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Counter, Histogram, MetricsRegistry

try:  # FastAPI >= 0.137 keeps included routers as a tree in `app.router.routes`
    from fastapi.routing import iter_route_contexts
except ImportError:  # pragma: no cover - older FastAPI
    iter_route_contexts = None  # type: ignore[assignment]

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


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The template of the route `scope` goes to (`/jobs/{job_id}`, `/docs`, `/static/{path}`), matched
    as the router matches: the first full match, else the first partial one (a 405); else UNMATCHED_ROUTE.

    FastAPI's included routers are opened up, so their routes match under their full paths."""
    partial: Any = None
    for route in _route_candidates(routes):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return _template(route)
        if match is Match.PARTIAL and partial is None:
            partial = route
    return UNMATCHED_ROUTE if partial is None else _template(partial)


def _route_candidates(routes: Sequence[BaseRoute]) -> Iterable[Any]:
    if iter_route_contexts is None:
        return routes  # FastAPI before 0.137: include_router copied every route into the list
    return iter_route_contexts(routes)


def _template(route: Any) -> str:
    # Route, APIRoute, Mount (and FastAPI's RouteContext) give their path with converters dropped.
    return getattr(route, "path_format", None) or UNMATCHED_ROUTE


class RequestMetricsMiddleware:
    """Count and time every HTTP request under its route template (`/jobs/{job_id}`, not the id).

    `routes` is the app's live route list (`app.router.routes`). A request answered by a FastAPI route
    is labelled by that route (`scope["route"]`, no matching of our own); any other (the docs pages,
    static files, a 413 the body limit gave before routing) is matched against `routes`, and only a path
    that no route matches is UNMATCHED_ROUTE.
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app dies before answering
        as_received = dict(scope)  # routing rewrites root_path under a mount; match on the original

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            matched = scope.get("route")  # set by FastAPI's own routes
            route = _template(matched) if matched is not None else route_template(self.routes, as_received)
            method = scope.get("method", "")
            self.metrics.requests.inc(method=method, route=route, status=str(status))
            self.metrics.request_seconds.observe(time.perf_counter() - started, method=method, route=route)
