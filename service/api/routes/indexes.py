"""GET /index (the index being served) and POST /index/build (a new one, built in a job)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import AdminDep, EngineDep, JobsDep, SettingsDep
from service.api.schemas import ErrorResponse, IndexBuildCreate, IndexPublic, JobPublic
from service.errors import ConflictError, NotReadyError
from service.paths import resolve_under_roots

router = APIRouter(prefix="/index", tags=["indexes"])


@router.get("", response_model=IndexPublic, responses={503: {"model": ErrorResponse}})
def current_index(engine: EngineDep) -> IndexPublic:
    with engine.lease() as lease:
        index = lease.index
        return IndexPublic(
            name=str(index.name), size=len(index), has_tokens=bool(index.has_tokens), model=lease.model.name,
            checkpoint_hash=lease.model.sha256, manifest=dict(index.manifest),
        )


@router.post(
    "/build",
    status_code=202,
    response_model=JobPublic,
    dependencies=[AdminDep],
    responses={code: {"model": ErrorResponse} for code in (400, 401, 403, 409, 422, 503)},
)
def build_index(body: IndexBuildCreate, response: Response, engine: EngineDep, jobs: JobsDep,
                settings: SettingsDep) -> JobPublic:
    """Build an index of `gallery` with the served checkpoint into <index root>/<name>, in a job;
    with `activate` it replaces the served index when done (searches go on meanwhile)."""
    gallery = resolve_under_roots(body.gallery, settings.data_roots, "gallery")
    model = engine.model
    if model is None:
        raise NotReadyError("not_ready", "no model is loaded; indexes are built with the served checkpoint")
    build_root = settings.build_root()
    if build_root is None:
        raise ConflictError("no_index_root", "the server has nowhere to write indexes: set SBIR_INDEX_ROOT")
    out = build_root / body.name
    if out.exists():
        raise ConflictError("index_exists", f"an index named {body.name!r} already exists", field="name")
    for job in jobs.store.list(kind="index_build", limit=500):
        if not job.finished and job.params.get("name") == body.name:
            raise ConflictError("index_exists", f"job {job.id} is already building {body.name!r}", field="name")
    job = jobs.submit("index_build", {
        "gallery": str(gallery), "checkpoint": str(model.path), "out": str(out), "name": body.name,
        "index_type": body.index_type, "tokens": body.tokens, "device": settings.device, "activate": body.activate,
        # A manifest under a data root may still name photos elsewhere: the job checks every item.
        "data_roots": [str(root) for root in settings.data_roots],
    })
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobPublic.from_job(job)
