"""GET /healthz, /readyz and /metrics."""

from __future__ import annotations

import re
import threading

from fastapi.testclient import TestClient

from service.engine import SearchEngine
from service.main import create_app
from tests.support.api import assert_error, running, search

LINE = r'[a-z_]+(\{\w+="(?:[^"\\]|\\.)*"(?:,\w+="(?:[^"\\]|\\.)*")*\})? (?:[-+]?[0-9.e+-]+|\+Inf|NaN)'


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, labels in any order."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if found == labels:
            return float(match.group(3))
    raise AssertionError(f"no sample {name}{labels}")


def test_healthz_and_readyz_when_ready(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready == {"status": "ready", "model": "zse-tiny", "family": "zse", "device": "cpu",
                     "index": {"name": "main", "size": 8}}


def test_readyz_is_503_until_loaded(make_settings):
    settings = make_settings()
    gate = threading.Event()

    class SlowEngine(SearchEngine):
        def load(self) -> None:
            gate.wait(30)
            super().load()

    app = create_app(settings, engine=SlowEngine(settings))
    with TestClient(app) as client:  # lifespan runs; loading waits on the gate
        assert client.get("/healthz").status_code == 200
        error = assert_error(client.get("/readyz"), 503, "not_ready")
        assert "loading" in error["message"]
        assert_error(search(client), 503, "not_ready")
        gate.set()
        assert app.state.engine.wait_loaded(60)
        assert client.get("/readyz").status_code == 200


def test_readyz_explains_a_broken_index(make_settings, tmp_path):
    broken = tmp_path / "broken-index"
    broken.mkdir()
    with running(create_app(make_settings(index_dir=broken))) as client:
        error = assert_error(client.get("/readyz"), 503, "not_ready")
        assert "loading failed" in error["message"]
        assert client.get("/healthz").status_code == 200


def test_metrics_count_requests_stages_index_and_jobs(make_settings):
    with running(create_app(make_settings())) as client:
        for _ in range(2):
            assert search(client, k=2).status_code == 200
        assert search(client, b"junk").status_code == 415
        client.get("/jobs/nope")
        client.get("/no/such/route")
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert sample(text, "sbir_http_requests_total", method="POST", route="/search", status="200") == 2
    assert sample(text, "sbir_http_requests_total", method="POST", route="/search", status="415") == 1
    assert sample(text, "sbir_http_requests_total", method="GET", route="/jobs/{job_id}", status="404") == 1
    assert sample(text, "sbir_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert sample(text, "sbir_http_request_duration_seconds_count", method="POST", route="/search") == 3
    assert sample(text, "sbir_http_request_duration_seconds_bucket", method="POST", route="/search", le="+Inf") == 3
    for stage in ("decode", "embed", "ann", "rerank", "total"):
        assert sample(text, "sbir_search_stage_duration_seconds_count", stage=stage) == 2
    assert sample(text, "sbir_search_requests_total", reranked="true") == 2
    assert sample(text, "sbir_index_size") == 8
    assert sample(text, "sbir_jobs", state="running") == 0
    assert "# TYPE sbir_http_request_duration_seconds histogram" in text
    # Every non-comment line is "name{labels} value".
    for line in text.strip().splitlines():
        assert line.startswith("# ") or re.fullmatch(LINE, line), line


def test_two_apps_do_not_share_metrics(make_settings):
    first, second = create_app(make_settings(index_dir=None)), create_app(make_settings(index_dir=None))
    with running(first) as client:
        client.get("/healthz")
    assert first.state.metrics.registry is not second.state.metrics.registry
    assert "/healthz" not in second.state.metrics.registry.render()
