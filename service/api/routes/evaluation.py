"""POST /evaluate: an evaluation job running `training.evaluate.evaluate` in its own process."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import AdminDep, EngineDep, JobsDep, SettingsDep
from service.api.schemas import ErrorResponse, EvaluateCreate, JobPublic
from service.errors import InvalidParameterError
from service.paths import resolve_under_roots

router = APIRouter(tags=["evaluation"])


@router.post(
    "/evaluate",
    status_code=202,
    response_model=JobPublic,
    dependencies=[AdminDep],
    responses={code: {"model": ErrorResponse} for code in (400, 401, 403, 422)},
)
def start_evaluation(body: EvaluateCreate, response: Response, jobs: JobsDep, engine: EngineDep,
                     settings: SettingsDep) -> JobPublic:
    """Queue an evaluation of `checkpoint` (default: the served one); the job's result is the report
    `sbir evaluate` writes (metrics, metrics_standard, sizes, timings)."""
    root = resolve_under_roots(body.root, settings.data_roots, "root")
    served = engine.model.path if engine.model is not None else settings.checkpoint
    if body.checkpoint is not None:
        checkpoint = str(resolve_under_roots(body.checkpoint, settings.data_roots, "checkpoint", also=served))
    elif engine.model is not None:
        checkpoint = str(engine.model.path)
    else:
        raise InvalidParameterError("checkpoint_required", "checkpoint: no model is being served, so name one",
                                    field="checkpoint")
    unseen = None if body.unseen is None else str(resolve_under_roots(body.unseen, settings.data_roots, "unseen"))
    job = jobs.submit("evaluate", {
        "dataset": body.dataset, "root": str(root), "checkpoint": checkpoint, "retrieval": body.retrieval,
        "shortlist": body.shortlist, "unseen": unseen, "quick": body.quick, "device": settings.device,
    })
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobPublic.from_job(job)
