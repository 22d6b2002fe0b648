"""GET /jobs, GET /jobs/{id}, DELETE /jobs/{id}: background jobs of every kind."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from service.api.deps import AdminDep, JobsDep
from service.api.schemas import ErrorResponse, JobKind, JobList, JobPublic, JobState
from service.errors import ConflictError, NotFoundError
from service.jobs import JobFinishedError

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(max_length=64)]


@router.get("", response_model=JobList)
def list_jobs(
    jobs: JobsDep,
    state: Annotated[JobState | None, Query()] = None,
    kind: Annotated[JobKind | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobList:
    """Jobs, newest first."""
    return JobList(jobs=[JobPublic.from_job(job, log_lines=5) for job in jobs.store.list(state, kind, limit)])


@router.get("/{job_id}", response_model=JobPublic, responses={404: {"model": ErrorResponse}})
def get_job(job_id: JobId, jobs: JobsDep) -> JobPublic:
    """State, progress in [0, 1], the last lines of its log, and its result or error."""
    job = jobs.store.get(job_id)
    if job is None:
        raise NotFoundError("unknown_job", f"job {job_id!r} does not exist")
    return JobPublic.from_job(job)


@router.delete(
    "/{job_id}",
    response_model=JobPublic,
    dependencies=[AdminDep],
    responses={code: {"model": ErrorResponse} for code in (401, 403, 404, 409)},
)
def cancel_job(job_id: JobId, jobs: JobsDep) -> JobPublic:
    """Cancel a queued or running job; a running job's process is terminated."""
    try:
        job = jobs.cancel(job_id)
    except KeyError as error:
        raise NotFoundError("unknown_job", f"job {job_id!r} does not exist") from error
    except JobFinishedError as error:
        raise ConflictError("job_finished", str(error)) from error
    return JobPublic.from_job(job)
