"""POST /evaluate: an evaluation job (its work lands with the training issue)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import AdminDep, EngineDep, JobsDep, SettingsDep
from service.api.schemas import ErrorResponse, EvaluateCreate, JobPublic
from service.errors import ApiError
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
    """Queue an evaluation job of `checkpoint` (default: the served one) on a dataset. For now the
    job fails with "evaluation is not implemented yet"."""
    root = resolve_under_roots(body.root, settings.data_roots, "root")
    if body.checkpoint is not None:
        checkpoint = str(resolve_under_roots(body.checkpoint, settings.data_roots, "checkpoint"))
    elif engine.model is not None:
        checkpoint = str(engine.model.checkpoint)
    else:
        raise ApiError(422, "checkpoint_required", "checkpoint: no model is being served, so name one",
                       field="checkpoint")
    job = jobs.submit("evaluate", {
        "dataset": body.dataset, "root": str(root), "checkpoint": checkpoint,
        "retrieval_mode": body.retrieval_mode, "config": body.config, "device": settings.device,
    })
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobPublic.from_job(job)
