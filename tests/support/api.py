"""The HTTP API as a test client sees it: the admin token, a ready TestClient, searches, job polling
and the JSON error shape."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.support.images import sketch_png

ADMIN_TOKEN = "test-admin-token"


@contextmanager
def running(app: FastAPI, timeout: float = 120.0) -> Iterator[TestClient]:
    """A TestClient over `app` with its lifespan run and the model and index loaded."""
    with TestClient(app) as client:
        assert app.state.engine.wait_loaded(timeout), "the engine did not finish loading"
        yield client


def auth(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def search(client: TestClient, png: bytes | None = None, **params) -> object:
    """POST /search with a sketch upload; returns the response."""
    return client.post("/search", params=params, files={"sketch": ("sketch.png", sketch_png() if png is None else png, "image/png")})


def finished(job: dict) -> bool:
    return job["state"] not in ("queued", "running")


def wait_for(client, job_id: str, predicate: Callable[[dict], bool] = finished, timeout: float = 60.0,
             interval: float = 0.05) -> dict:
    """Poll GET /jobs/{job_id} (a TestClient or an httpx.Client) until `predicate(job)`; the job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(interval)
    raise AssertionError(f"job {job_id} never reached the expected state: {job}")


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response has `status` and the API's JSON error shape (and `code` when given)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]
