"""GET /explain/{query_id}/{image_id}: which parts of a past query's sketch match which parts of a photo."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from service.api.deps import EngineDep
from service.api.schemas import ErrorResponse, ExplainResponse, GridCell, MatchedPairPublic
from service.errors import ApiError
from service.explain import PNG_SIZE, grid_side, render_pairs, top_pairs

router = APIRouter(tags=["explain"])


@router.get(
    "/explain/{query_id}/{image_id}",
    response_model=ExplainResponse,
    responses={200: {"content": {"image/png": {}}, "description": f"JSON, or a {PNG_SIZE[0]}x{PNG_SIZE[1]} PNG"},
               404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
def explain(
    query_id: Annotated[str, Path(max_length=64)],
    image_id: Annotated[int, Path(ge=0, le=2**63 - 1)],
    engine: EngineDep,
    format: Annotated[Literal["json", "png"], Query(description="json, or png for a drawing")] = "json",
    top: Annotated[int, Query(ge=1, le=49, description="matched pairs to list or draw")] = 10,
) -> ExplainResponse | Response:
    """Cosine kernel between the sketch's and the photo's anchors after cross-attention (ZSE only)."""
    query, record, kernel = engine.explain(query_id, image_id)
    side = grid_side(kernel)
    pairs = top_pairs(kernel, top)
    if format == "png":
        from service.search import load_photo

        try:
            photo = load_photo(record.path)
        except (OSError, SyntaxError, ValueError) as error:
            raise ApiError(500, "image_unreadable", f"the file of image {image_id} cannot be decoded") from error
        return Response(render_pairs(query.sketch_image, photo, pairs, side), media_type="image/png")
    return ExplainResponse(
        query_id=query_id, image_id=image_id, grid=side,
        pairs=[MatchedPairPublic(sketch_cell=GridCell(row=p.sketch_cell[0], col=p.sketch_cell[1]),
                                 photo_cell=GridCell(row=p.photo_cell[0], col=p.photo_cell[1]), score=p.score)
               for p in pairs],
        kernel=kernel.astype(float).round(6).tolist(),
    )
