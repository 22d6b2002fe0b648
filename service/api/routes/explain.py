"""GET /explain/{query_id}/{image_id}: why a past query's sketch matches a photo, in four kinds.

correspondence (default; the route's original behaviour), attention, influence and synthesis; JSON
bodies are described by the models below, `format=png` gives a PNG_SIZE picture.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field

from service.api.deps import EngineDep
from service.api.schemas import ErrorResponse, GridCell, MatchedPairPublic
from service.explain import (
    MAX_NEIGHBOURS,
    PNG_SIZE,
    ExplainOptions,
    explain_query,
    parse_box,
)

router = APIRouter(tags=["explain"])


class CorrespondenceExplanation(BaseModel):
    kind: Literal["correspondence"] = "correspondence"
    query_id: str | None
    image_id: int
    level: Literal["anchor", "token"] = Field(
        description="anchor: the 7x7 kernel the relation network scores (cells are feature-map positions); "
                    "token: cross-attention tokens on the 14x14 patch grid (cells are image regions)")
    grid: int = Field(description="side of the grid: cell i is divmod(i, grid)")
    box: list[float] | None = Field(description="the sketch region asked for, x0,y0,x1,y1 in 224x224 pixels")
    region: list[GridCell] | None = Field(description="sketch cells the box covers")
    pairs: list[MatchedPairPublic] = Field(description="each sketch cell's best photo cell, strongest first")
    kernel: list[list[float]] = Field(description="[C, C] cosines: kernel[i][j] = cos(sketch cell i, photo cell j)")


class AttentionSide(BaseModel):
    ret_self: list[float] = Field(description="[H] attention of [Ret] to itself, per head")
    maps: list[list[list[float]]] = Field(description="[H, G, G] attention of [Ret] to each patch; "
                                                      "with ret_self, each head sums to 1")
    mean: list[list[float]] = Field(description="[G, G] mean over heads")
    selections: list[list[list[bool]]] = Field(description="[L, G, G] tokens kept after each selection layer")


class AttentionExplanation(BaseModel):
    kind: Literal["attention"] = "attention"
    query_id: str | None
    image_id: int
    grid: int
    heads: int
    selection_layers: list[int] = Field(description="0-based blocks that selected tokens (empty: selection off)")
    sketch: AttentionSide
    photo: AttentionSide


class InfluentialPair(BaseModel):
    sketch_cell: GridCell
    photo_cell: GridCell
    cosine: float = Field(description="kernel entry of the pair")
    score_without: float = Field(description="relation score with the pair removed")
    drop_percent: float = Field(description="100 * (score - score_without) / score")


class InfluenceExplanation(BaseModel):
    kind: Literal["influence"] = "influence"
    query_id: str | None
    image_id: int
    grid: int = Field(description="side of the anchor grid (7)")
    relation_score: float
    removal: str = Field(description="what removing a pair means")
    pairs: list[InfluentialPair] = Field(description="the pairs whose removal lowers the score most, first")
    drop_percent: list[list[float]] = Field(description="[A, A] drop in percent for every pair")


class PatchMatch(BaseModel):
    image_id: int
    cell: GridCell
    score: float = Field(description="cosine of the sketch and photo patch tokens")


class PatchSource(BaseModel):
    cell: GridCell
    matches: list[PatchMatch] = Field(description="photo patches that replaced this sketch patch (empty: kept)")


class SynthesisExplanation(BaseModel):
    kind: Literal["synthesis"] = "synthesis"
    query_id: str | None
    image_id: int
    source: Literal["retrieved", "gallery"]
    grid: int
    patch_size: int
    tokens: str
    photos: list[int] | None = Field(description="source=retrieved: the photos patches were taken from")
    k: int | None = Field(description="source=gallery: nearest patches averaged per sketch patch")
    patch_index: str | None = Field(default=None, description="source=gallery: the patch index's FAISS type")
    patches: list[PatchSource]


AnyExplanation = Annotated[
    CorrespondenceExplanation | AttentionExplanation | InfluenceExplanation | SynthesisExplanation,
    Field(discriminator="kind"),
]
_MODELS: dict[str, type[BaseModel]] = {
    "correspondence": CorrespondenceExplanation, "attention": AttentionExplanation,
    "influence": InfluenceExplanation, "synthesis": SynthesisExplanation,
}


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
    kind: Annotated[Literal["correspondence", "attention", "influence", "synthesis"],
                    Query(description="what to explain")] = "correspondence",
    format: Annotated[Literal["json", "png"], Query(description="json, or png for a drawing")] = "json",
    top: Annotated[int | None, Query(ge=1, le=2401, description=(
        "correspondence: pairs (default 10, at most 49 anchors / 196 tokens); influence: pairs (default 10, "
        "at most 2401); synthesis with source=retrieved: photos to take patches from (default 5, at most 50)"
    ))] = None,
    level: Annotated[Literal["anchor", "token"], Query(description="correspondence grid")] = "anchor",
    box: Annotated[str | None, Query(max_length=100, description=(
        "correspondence: sketch region x0,y0,x1,y1 in pixels of the 224x224 sketch"))] = None,
    head: Annotated[int | None, Query(ge=0, description="attention PNG: head to draw (default: mean)")] = None,
    source: Annotated[Literal["retrieved", "gallery"], Query(description="synthesis patches from")] = "retrieved",
    k: Annotated[int, Query(ge=1, le=MAX_NEIGHBOURS, description="synthesis from the gallery: patches averaged")]
        = 5,
) -> BaseModel | Response:
    """Explain a match (ZSE checkpoints only): token correspondence, [Ret] attention, the most
    influential kernel pairs, or sketch-to-photo synthesis. A sync route: FastAPI runs it in a worker thread."""
    options = ExplainOptions(kind=kind, top=top, level=level, box=None if box is None else parse_box(box),
                             head=head, source=source, k=k)
    explanation = explain_query(engine, query_id, image_id, options)
    if format == "png":
        return Response(explanation.render(), media_type="image/png")
    return _MODELS[kind].model_validate(explanation.body)
