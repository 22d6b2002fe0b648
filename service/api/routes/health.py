"""GET /healthz (the process answers), GET /readyz (model and index loaded), GET /metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.api.deps import EngineDep, MetricsDep
from service.api.schemas import ErrorResponse, HealthResponse, IndexSummary, ReadyResponse
from service.errors import NotReadyError
from service.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse)
def healthz() -> HealthResponse:
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ErrorResponse}})
def readyz(engine: EngineDep) -> ReadyResponse:
    """200 once the model and an index are loaded; 503 with the reason until then."""
    model, summary = engine.model, engine.index_summary()
    if model is None or summary is None:
        reasons = engine.not_ready_reasons() or ["the model or index is not loaded"]
        raise NotReadyError("not_ready", "; ".join(reasons))
    return ReadyResponse(model=model.name, family=model.family, device=str(model.device),
                         index=IndexSummary(name=summary[0], size=summary[1]))


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE: {}}}})
def metrics(service_metrics: MetricsDep) -> Response:
    """Prometheus text format."""
    return Response(service_metrics.registry.render(), media_type=CONTENT_TYPE)
