"""Dependencies shared by the routers. Everything comes from `request.app.state`, set up by
`create_app`, so tests replace any of them with `app.dependency_overrides`."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError

from service.engine import SearchEngine
from service.errors import ForbiddenError, UnauthorizedError
from service.jobs import JobManager
from service.service_metrics import ServiceMetrics
from service.settings import DEFAULT_K, DEFAULT_SHORTLIST, K_LIMIT, SHORTLIST_LIMIT, Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> SearchEngine:
    return request.app.state.engine


def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[SearchEngine, Depends(get_engine)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]


def require_admin(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(description="Bearer <SBIR_ADMIN_TOKEN>")] = None,
) -> None:
    """Guard of the state-changing endpoints: 403 when no token is configured (disabled, never
    open), 401 without a bearer token, 403 with a wrong one. The token is never logged."""
    if settings.admin_token is None:
        raise ForbiddenError("admin_disabled",
                             "state-changing endpoints are disabled: the server has no SBIR_ADMIN_TOKEN")
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise UnauthorizedError("unauthorized", "this endpoint needs 'Authorization: Bearer <admin token>'")
    expected = settings.admin_token.get_secret_value().encode()
    # Bytes, so non-ASCII input cannot raise; compare_digest so timing does not leak the token.
    if not hmac.compare_digest(presented.strip().encode(), expected):
        raise ForbiddenError("forbidden", "the admin token is not valid")


AdminDep = Depends(require_admin)


@dataclass(frozen=True)
class SearchParams:
    k: int
    shortlist: int
    rerank: bool | None


def _out_of_range(name: str, value: int, limit: int) -> RequestValidationError:
    # Same shape as FastAPI's own validation errors, so clients see one kind of 422.
    return RequestValidationError([{
        "loc": ("query", name), "msg": f"Input should be less than or equal to {limit}", "type": "less_than_equal",
        "input": value,
    }])


def search_params(
    settings: SettingsDep,
    k: Annotated[int | None, Query(ge=1, le=K_LIMIT, description="results to return (default 20)")] = None,
    shortlist: Annotated[
        int | None, Query(ge=1, le=SHORTLIST_LIMIT, description="ANN candidates to re-rank (default 100)")
    ] = None,
    rerank: Annotated[bool | None, Query(description="re-rank with the relation network (default: ZSE yes)")] = None,
) -> SearchParams:
    """Query parameters of POST /search, checked against the configured limits too; the defaults
    shrink to the configured limits so that a plain request always works."""
    if k is None:
        k = min(DEFAULT_K, settings.k_max)
    elif k > settings.k_max:
        raise _out_of_range("k", k, settings.k_max)
    if shortlist is None:
        shortlist = min(DEFAULT_SHORTLIST, settings.shortlist_max)
    elif shortlist > settings.shortlist_max:
        raise _out_of_range("shortlist", shortlist, settings.shortlist_max)
    return SearchParams(k=k, shortlist=shortlist, rerank=rerank)


SearchParamsDep = Annotated[SearchParams, Depends(search_params)]
