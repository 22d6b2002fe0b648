"""The JSON error shape for every kind of failure, including unexpected ones."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.conftest import assert_error


def test_unknown_route_and_method(client):
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.put("/search"), 405, "method_not_allowed")


def test_malformed_json_body_is_422(client):
    response = client.post("/train", content=b"{not json", headers={"Content-Type": "application/json",
                                                                      "Authorization": "Bearer test-admin-token"})
    assert_error(response, 422, "validation_error")


def test_unexpected_exception_is_logged_and_returned_as_json_500(make_settings, caplog):
    app = create_app(make_settings(index_dir=None, checkpoint=None))
    router = APIRouter()

    @router.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    error = assert_error(response, 500, "internal_error")
    assert "secret internals" not in error["message"]
    assert "secret internals" in caplog.text
