"""POST /search: a sketch in, ranked gallery photos out."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, File, UploadFile
from starlette.concurrency import run_in_threadpool

from service.api.deps import EngineDep, MetricsDep, SearchParamsDep, SettingsDep
from service.api.schemas import ErrorResponse, IndexSummary, SearchResponse, SearchTimings
from service.results import search_results
from service.uploads import decode_sketch, too_large

router = APIRouter(tags=["search"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 413, 415, 422, 503)}


@router.post("/search", response_model=SearchResponse, responses=_ERRORS)
async def search(
    sketch: Annotated[UploadFile, File(description="the sketch: PNG, JPEG or WebP")],
    params: SearchParamsDep,
    engine: EngineDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> SearchResponse:
    """Embed the sketch once, shortlist by ANN, re-rank the shortlist by relation score."""
    started = time.perf_counter()
    engine.ensure_ready()  # 503 before any decoding work
    if sketch.size is not None and sketch.size > settings.max_upload_bytes:
        raise too_large(settings.max_upload_bytes)
    data = await sketch.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise too_large(settings.max_upload_bytes)
    image = await run_in_threadpool(decode_sketch, data, max_pixels=settings.max_pixels)
    decode_ms = round((time.perf_counter() - started) * 1000.0, 3)

    # Model work off the event loop; the engine serialises it with its own lock.
    outcome = await run_in_threadpool(
        engine.search, image, k=params.k, shortlist=params.shortlist, rerank=params.rerank
    )
    timings = SearchTimings(decode=decode_ms, total=round((time.perf_counter() - started) * 1000.0, 3),
                            **outcome.timings_ms)
    for stage, value in timings.model_dump().items():
        metrics.search_stage_seconds.observe(value / 1000.0, stage=stage)
    metrics.search_results.inc(reranked=str(outcome.reranked).lower())

    return SearchResponse(
        query_id=outcome.query_id, reranked=outcome.reranked, shortlist=outcome.shortlist_size,
        results=search_results(outcome, show_paths=settings.show_paths),
        timings_ms=timings, index=IndexSummary(name=outcome.index_name, size=outcome.index_size),
    )
