"""POST /train: a training job (its work lands with the training issue)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import AdminDep, JobsDep, SettingsDep
from service.api.schemas import ErrorResponse, JobPublic, TrainCreate
from service.paths import resolve_under_roots

router = APIRouter(tags=["training"])


@router.post(
    "/train",
    status_code=202,
    response_model=JobPublic,
    dependencies=[AdminDep],
    responses={code: {"model": ErrorResponse} for code in (400, 401, 403, 422)},
)
def start_training(body: TrainCreate, response: Response, jobs: JobsDep, settings: SettingsDep) -> JobPublic:
    """Queue a training job. For now the job fails with "training is not implemented yet"."""
    root = resolve_under_roots(body.root, settings.data_roots, "root")
    checkpoint = (resolve_under_roots(body.checkpoint, settings.data_roots, "checkpoint")
                  if body.checkpoint is not None else None)
    job = jobs.submit("train", {
        "dataset": body.dataset, "root": str(root), "checkpoint": None if checkpoint is None else str(checkpoint),
        "retrieval_mode": body.retrieval_mode, "config": body.config, "device": settings.device,
    })
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobPublic.from_job(job)
