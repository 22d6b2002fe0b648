"""Metrics on prometheus_client: one registry per app, read back through prometheus_client's own parser."""

from __future__ import annotations

import prometheus_client
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from service.main import create_app
from service.metrics import MetricsRegistry
from service.service_metrics import UNMATCHED_ROUTE, route_template
from service.uploads import MULTIPART_OVERHEAD


def parsed(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition: (sample name, labels) -> value."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(text: str, sample_name: str, /, **labels: str) -> float | None:
    return parsed(text).get((sample_name, frozenset(labels.items())))


def families(text: str) -> dict[str, tuple[str, str]]:
    """Family name -> (type, help)."""
    return {family.name: (family.type, family.documentation) for family in text_string_to_metric_families(text)}


def test_histogram_buckets_are_cumulative_and_inclusive():
    registry = MetricsRegistry()
    histogram = registry.histogram("latency_seconds", "Latency.", ("route",), buckets=(0.1, 1.0))
    for observed in (0.05, 0.1, 0.5, 2.0):
        histogram.observe(observed, route="/x")
    text = registry.render()
    assert families(text)["latency_seconds"] == ("histogram", "Latency.")
    assert value(text, "latency_seconds_bucket", route="/x", le="0.1") == 2  # 0.1 itself is in le=0.1
    assert value(text, "latency_seconds_bucket", route="/x", le="1.0") == 3
    assert value(text, "latency_seconds_bucket", route="/x", le="+Inf") == 4
    assert value(text, "latency_seconds_count", route="/x") == 4
    assert value(text, "latency_seconds_sum", route="/x") == pytest.approx(2.65)


def test_counter_label_values_survive_escaping_and_are_checked():
    registry = MetricsRegistry()
    counter = registry.counter("things_total", "Things.", ("name",))
    awkward = 'a "quoted"\\path\nline'
    counter.inc(name=awkward)
    counter.inc(2, name="b")
    text = registry.render()
    assert families(text)["things"] == ("counter", "Things.")
    assert value(text, "things_total", name=awkward) == 1
    assert value(text, "things_total", name="b") == 2
    with pytest.raises(ValueError):
        counter.inc(other="x")
    with pytest.raises(ValueError):
        counter.inc()  # a labelled counter needs its labels
    with pytest.raises(ValueError):
        registry.counter("things_total", "again")


def test_gauge_reads_at_scrape_time():
    registry = MetricsRegistry()
    values = {"size": 3}
    reads = []

    def read_size():
        reads.append(1)
        return [({}, values["size"])]

    registry.gauge("index_size", "Size.", read_size)
    registry.gauge("jobs", "Jobs.", lambda: [({"state": "queued"}, 2), ({"state": "running"}, 1)], ("state",))
    registry.gauge("nothing", "No samples yet.", lambda: [])
    assert reads == []  # registering does not read
    text = registry.render()
    assert families(text)["index_size"] == ("gauge", "Size.")
    assert value(text, "index_size") == 3
    assert (value(text, "jobs", state="queued"), value(text, "jobs", state="running")) == (2, 1)
    assert not [key for key in parsed(text) if key[0] == "nothing"]
    values["size"] = 5
    assert value(registry.render(), "index_size") == 5

    registry.gauge("wrong", "Labels it does not declare.", lambda: [({"state": "x"}, 1)])
    with pytest.raises(ValueError):
        registry.render()


def test_registries_are_separate_and_not_the_global_default():
    first, second = MetricsRegistry(), MetricsRegistry()
    first.counter("shared_name_total", "In the first.").inc(3)
    second.counter("shared_name_total", "In the second.")  # the same name in another registry is fine
    assert value(first.render(), "shared_name_total") == 3
    assert value(second.render(), "shared_name_total") == 0
    assert prometheus_client.REGISTRY.get_sample_value("shared_name_total") is None


def test_route_template_matches_like_the_router():
    def ok(request):
        return PlainTextResponse("ok")

    routes = [Route("/items/{item_id:int}", ok), Route("/only-post", ok, methods=["POST"]),
              Mount("/files", routes=[Route("/{name}", ok)])]

    def scope(path: str, method: str = "GET") -> dict:
        return {"type": "http", "path": path, "root_path": "", "method": method}

    assert route_template(routes, scope("/items/7")) == "/items/{item_id}"
    assert route_template(routes, scope("/items/seven")) == UNMATCHED_ROUTE  # the int converter refuses it
    assert route_template(routes, scope("/only-post")) == "/only-post"  # a 405, still that route
    assert route_template(routes, scope("/files/a.txt")) == "/files/{path}"
    assert route_template(routes, scope("/nowhere")) == UNMATCHED_ROUTE
    assert route_template([], scope("/items/7")) == UNMATCHED_ROUTE
    # The same list serves a real app unchanged.
    with TestClient(Starlette(routes=routes)) as client:
        assert client.get("/items/7").text == "ok"


def test_route_template_sees_routes_inside_included_routers():
    inner = APIRouter(prefix="/things")

    @inner.get("/{thing_id}")
    def thing(thing_id: int) -> dict:
        return {"id": thing_id}

    app = FastAPI()
    app.include_router(inner, prefix="/v1")
    scope = {"type": "http", "path": "/v1/things/3", "root_path": "", "method": "GET"}
    assert route_template(app.router.routes, scope) == "/v1/things/{thing_id}"
    assert route_template(app.router.routes, {**scope, "method": "DELETE"}) == "/v1/things/{thing_id}"
    assert route_template(app.router.routes, {**scope, "path": "/things/3"}) == UNMATCHED_ROUTE
    assert route_template(app.router.routes, {**scope, "path": "/docs"}) == "/docs"
    with TestClient(app) as client:
        assert client.get("/v1/things/3").json() == {"id": 3}


def test_requests_are_labelled_by_route_template(make_settings):
    app = create_app(make_settings(index_dir=None, max_upload_bytes=1024))
    with TestClient(app) as client:
        assert client.get("/docs").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/docs/oauth2-redirect").status_code == 200
        assert client.post("/docs").status_code == 405
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/static/no-such-file.js").status_code == 404
        assert client.get("/healthz").status_code == 200
        client.get("/jobs/some-job-id")
        client.get("/images/12345")
        client.get("/explain/some-query/12345")
        too_large = b"x" * (1024 + MULTIPART_OVERHEAD + 1)
        assert client.post("/search", content=too_large, headers={"Content-Type": "image/png"}).status_code == 413
        assert client.get("/no/such/route").status_code == 404
        text = client.get("/metrics").text

    def requests(route: str, status: str, method: str = "GET") -> float | None:
        return value(text, "sbir_http_requests_total", method=method, route=route, status=status)

    assert requests("/docs", "200") == 1
    assert requests("/docs", "405", method="POST") == 1
    assert requests("/openapi.json", "200") == 1
    assert requests("/docs/oauth2-redirect", "200") == 1
    assert requests("/static/{path}", "200") == 1
    assert requests("/static/{path}", "404") == 1
    assert requests("/healthz", "200") == 1
    assert requests("/search", "413", method="POST") == 1
    assert requests(UNMATCHED_ROUTE, "404") == 1
    routes = {dict(labels)["route"] for name, labels in parsed(text) if name == "sbir_http_requests_total"}
    assert routes == {"/docs", "/openapi.json", "/docs/oauth2-redirect", "/static/{path}", "/healthz", "/search",
                      "/jobs/{job_id}", "/images/{image_id}", "/explain/{query_id}/{image_id}", UNMATCHED_ROUTE}
    assert value(text, "sbir_http_request_duration_seconds_count", method="GET", route="/docs") == 1
