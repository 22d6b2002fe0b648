"""The service's domain errors, and the one place they become HTTP responses.

Service code raises a `ServiceError` subclass saying what went wrong (`NotFoundError`,
`InvalidParameterError`, `NotReadyError`, ...) with a stable machine-readable `code`; it never
picks an HTTP status. `HTTP_STATUS` below is the one table from error class to status (and the
headers sent with it, such as `Retry-After`); the handlers registered by `install_error_handlers`
use it, and turn FastAPI's own HTTP and validation errors and anything unexpected into the same
JSON shape: `{"error": {"code": ..., "message": ...}}`.

A `ServiceError` is a `models.errors.SbirError`, so outside the server (`sbir explain`) the same
errors print as one line with exit status 2.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.errors import SbirError

logger = logging.getLogger("service.errors")


class ServiceError(SbirError):
    """A request the service cannot serve as asked (raise a subclass: it decides the status).

    code: stable snake_case identifier clients may branch on (e.g. "unknown_query"); message: one
    line for a person; field: the request field at fault (paths, parameters), repeated in the body
    when given.
    """

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class InvalidInputError(ServiceError):
    """The data sent cannot be used: a malformed or missing path, an image that does not decode."""


class InvalidParameterError(ServiceError):
    """A parameter outside what it accepts, for the request or for the model being served."""


class NotSupportedError(ServiceError):
    """A valid request the served model or index cannot answer (e.g. re-ranking without a relation network)."""


class UnauthorizedError(ServiceError):
    """No credentials were presented where they are needed."""


class ForbiddenError(ServiceError):
    """Refused whoever asks: a wrong token, a disabled endpoint, a path outside the data roots."""


class NotFoundError(ServiceError):
    """The id or name asked for does not exist (or no longer does)."""


class ConflictError(ServiceError):
    """The request clashes with the current state (a name taken, a job already finished)."""


class TooLargeError(ServiceError):
    """An upload over the byte or pixel limit."""


class UnsupportedMediaTypeError(ServiceError):
    """An upload in a format the service does not accept."""


class StoredDataError(ServiceError):
    """Data the server holds (a gallery photo) went bad: the server's problem, said plainly."""


class NotReadyError(ServiceError):
    """The model or index is not loaded (yet); worth retrying shortly."""


# The one table from domain error to HTTP: status, and headers sent with it. A subclass of a listed
# class gets its row; tests/service/test_errors.py checks that every ServiceError class has one.
HTTP_STATUS: dict[type[ServiceError], tuple[int, Mapping[str, str]]] = {
    InvalidInputError: (400, {}),
    UnauthorizedError: (401, {"WWW-Authenticate": "Bearer"}),
    ForbiddenError: (403, {}),
    NotFoundError: (404, {}),
    ConflictError: (409, {}),
    TooLargeError: (413, {}),
    UnsupportedMediaTypeError: (415, {}),
    InvalidParameterError: (422, {}),
    NotSupportedError: (422, {}),
    StoredDataError: (500, {}),
    NotReadyError: (503, {"Retry-After": "5"}),
}


def http_status(error: ServiceError) -> tuple[int, dict[str, str]]:
    """(status, headers) of a domain error, from `HTTP_STATUS` (500 for a class missing from it)."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            status, headers = HTTP_STATUS[cls]
            return status, dict(headers)
    logger.error("%s has no row in service.errors.HTTP_STATUS", type(error).__name__)
    return 500, {}


class CarriedServiceError(StarletteHTTPException):
    """A ServiceError wrapped in Starlette's HTTPException, for the one place that needs that type: a
    middleware failing a request body while FastAPI parses it (FastAPI re-raises HTTPExceptions from
    body parsing and turns anything else into a 400). Status and headers still come from the table."""

    def __init__(self, error: ServiceError) -> None:
        status, headers = http_status(error)
        super().__init__(status_code=status, detail=error.message, headers=headers or None)
        self.error = error


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"error": {"code": code, "message": message, **extra}}


def error_response(status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status_code, headers=headers)


def service_error_response(error: ServiceError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The response for a domain error: status and headers from `HTTP_STATUS` (plus `headers`)."""
    status, table_headers = http_status(error)
    extra = {"field": error.field} if error.field else {}
    return error_response(status, error.code, error.message, {**table_headers, **(headers or {})} or None,
                          **extra)


def _code_for_status(status_code: int) -> str:
    """Default code for errors raised without one (404 for an unknown route, 405, ...)."""
    try:
        return HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


async def _service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return service_error_response(exc)


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, CarriedServiceError):
        return service_error_response(exc.error)
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return error_response(exc.status_code, _code_for_status(exc.status_code), message, exc.headers)


def _describe_validation_error(error: dict[str, Any]) -> dict[str, Any]:
    # Keep only what is safe and useful: the raw input may be an upload or a secret.
    location = [str(part) for part in error.get("loc", ())]
    return {"loc": location, "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}


async def _validation_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [_describe_validation_error(error) for error in exc.errors()]
    parts = []
    for detail in details:
        # ("query", "k") -> "k"; the location kind is noise for a person reading the message.
        where = ".".join(detail["loc"][1:] or detail["loc"])
        parts.append(f"{where}: {detail['msg']}" if where else detail["msg"])
    message = "; ".join(parts) or "invalid request"
    return error_response(422, "validation_error", message, details=details)


async def _unhandled_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    # A bug, never an input problem: log the traceback, tell the client nothing internal.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the JSON shape above."""
    app.add_exception_handler(ServiceError, _service_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(RequestValidationError, _validation_exception_handler)
    app.add_exception_handler(Exception, _unhandled_exception_handler)
