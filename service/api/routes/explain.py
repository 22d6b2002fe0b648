"""GET /explain/{query_id}/{image_id}: why a past query's sketch matches a photo, in four kinds.

correspondence (default; the route's original behaviour), attention, influence and synthesis; JSON
bodies are the typed explanations of `service.explain` (models in `service.api.schemas`),
`format=png` gives a PNG_SIZE picture.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from service.api.deps import EngineDep
from service.api.schemas import AnyExplanation, ErrorResponse, ExplanationBody
from service.explain import MAX_NEIGHBOURS, ExplainOptions, explain_query, parse_box
from service.explain_kinds import Kind, Source
from service.explain_render import PNG_SIZE

router = APIRouter(tags=["explain"])


@router.get(
    "/explain/{query_id}/{image_id}",
    response_model=AnyExplanation,
    responses={200: {"content": {"image/png": {}}, "description": f"JSON, or a {PNG_SIZE[0]}x{PNG_SIZE[1]} PNG"},
               404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 500: {"model": ErrorResponse},
               503: {"model": ErrorResponse}},
)
def explain(
    query_id: Annotated[str, Path(max_length=64)],
    image_id: Annotated[int, Path(ge=0, le=2**63 - 1)],
    engine: EngineDep,
    kind: Annotated[Kind, Query(description="what to explain")] = "correspondence",
    format: Annotated[Literal["json", "png"], Query(description="json, or png for a drawing")] = "json",
    top: Annotated[int | None, Query(ge=1, le=2401, description=(
        "correspondence: pairs (default 10, at most 49 anchors / 196 tokens); influence: pairs (default 10, "
        "at most 2401); synthesis with source=retrieved: photos to take patches from (default 5, at most 50)"
    ))] = None,
    level: Annotated[Literal["anchor", "token"], Query(description="correspondence grid")] = "anchor",
    box: Annotated[str | None, Query(max_length=100, description=(
        "correspondence: sketch region x0,y0,x1,y1 in pixels of the 224x224 sketch"))] = None,
    head: Annotated[int | None, Query(ge=0, description="attention PNG: head to draw (default: mean)")] = None,
    source: Annotated[Source, Query(description="synthesis patches from")] = "retrieved",
    k: Annotated[int, Query(ge=1, le=MAX_NEIGHBOURS, description="synthesis from the gallery: patches averaged")]
        = 5,
) -> ExplanationBody | Response:
    """Explain a match (ZSE checkpoints only): token correspondence, [Ret] attention, the most
    influential kernel pairs, or sketch-to-photo synthesis. A sync route: FastAPI runs it in a worker thread."""
    options = ExplainOptions(kind=kind, top=top, level=level, box=None if box is None else parse_box(box),
                             head=head, source=source, k=k)
    explanation = explain_query(engine, query_id, image_id, options)
    if format == "png":
        return Response(explanation.render(), media_type="image/png")
    return explanation.body
