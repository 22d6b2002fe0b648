"""The one error shape of the API: `{"error": {"code": ..., "message": ...}}`.

`ApiError` is what service code raises; the handlers registered by `install_error_handlers` turn
it, FastAPI's own HTTP and validation errors, and anything unexpected into that shape.
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

logger = logging.getLogger("service.errors")


class ApiError(StarletteHTTPException):
    """An HTTP error with a stable machine-readable `code` (snake_case) and a human message.

    field: the request field at fault (paths, parameters), repeated in the body when given.
    """

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=headers)
        self.code = code
        self.message = message
        self.field = field


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"error": {"code": code, "message": message, **extra}}


def error_response(status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None,
                   **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status_code, headers=headers)


def _code_for_status(status_code: int) -> str:
    """Default code for errors raised without one (404 for an unknown route, 405, ...)."""
    try:
        return HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, ApiError):
        extra = {"field": exc.field} if exc.field else {}
        return error_response(exc.status_code, exc.code, exc.message, exc.headers, **extra)
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
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(RequestValidationError, _validation_exception_handler)
    app.add_exception_handler(Exception, _unhandled_exception_handler)
