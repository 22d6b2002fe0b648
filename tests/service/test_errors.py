"""The JSON error shape for every kind of failure, including unexpected ones."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.testclient import TestClient

from models.errors import SbirError
from service import errors
from service.main import create_app
from tests.support.api import assert_error

# What clients see for each domain error, written out here rather than read from the table.
EXPECTED_HTTP = [
    (errors.InvalidInputError, 400, {}),
    (errors.UnauthorizedError, 401, {"www-authenticate": "Bearer"}),
    (errors.ForbiddenError, 403, {}),
    (errors.NotFoundError, 404, {}),
    (errors.ConflictError, 409, {}),
    (errors.TooLargeError, 413, {}),
    (errors.UnsupportedMediaTypeError, 415, {}),
    (errors.InvalidParameterError, 422, {}),
    (errors.NotSupportedError, 422, {}),
    (errors.StoredDataError, 500, {}),
    (errors.NotReadyError, 503, {"retry-after": "5"}),
]
TABLE_HEADERS = ("retry-after", "www-authenticate")


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


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_domain_error_is_an_sbir_error_with_a_status_checked_here():
    assert {row[0] for row in EXPECTED_HTTP} == _subclasses(errors.ServiceError)
    assert issubclass(errors.ServiceError, SbirError)


def test_each_domain_error_maps_to_its_status_code_and_headers(make_settings):
    app = create_app(make_settings(index_dir=None, checkpoint=None))
    router = APIRouter()

    @router.get("/fail/{number}")
    def fail(number: int, field: str | None = None) -> None:
        raise EXPECTED_HTTP[number][0]("some_code", "what went wrong", field=field)

    app.include_router(router)
    with TestClient(app, raise_server_exceptions=False) as client:
        for number, (error_type, status, headers) in enumerate(EXPECTED_HTTP):
            plain = client.get(f"/fail/{number}")
            assert assert_error(plain, status, "some_code") == {"code": "some_code", "message": "what went wrong"}, \
                error_type
            for name in TABLE_HEADERS:
                assert plain.headers.get(name) == headers.get(name), (error_type, name)
            named = client.get(f"/fail/{number}", params={"field": "box"})
            assert assert_error(named, status, "some_code")["field"] == "box", error_type
