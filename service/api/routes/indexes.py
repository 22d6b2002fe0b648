"""GET /index (the index being served), POST /index/build (a new one, built in a job) and POST
/index/activate (serve another index under the index root)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from indexer.manifest import MANIFEST_FILE
from service.active_index import record_active
from service.api.deps import AdminDep, EngineDep, JobsDep, SettingsDep
from service.api.schemas import ErrorResponse, IndexActivate, IndexBuildCreate, IndexPublic, JobPublic
from service.errors import ConflictError, NotFoundError, NotReadyError
from service.paths import resolve_under_roots

router = APIRouter(prefix="/index", tags=["indexes"])


@router.get("", response_model=IndexPublic, responses={503: {"model": ErrorResponse}})
def current_index(engine: EngineDep) -> IndexPublic:
    with engine.lease() as lease:
        return _describe(lease.index, lease.model)


def _describe(index: Any, model: Any) -> IndexPublic:
    return IndexPublic(
        name=str(index.name), size=len(index), has_tokens=bool(index.has_tokens), model=model.name,
        checkpoint_hash=model.sha256, manifest=dict(index.manifest),
    )


@router.post(
    "/activate",
    response_model=IndexPublic,
    dependencies=[AdminDep],
    responses={code: {"model": ErrorResponse} for code in (401, 403, 404, 409, 422, 503)},
)
def activate_index(body: IndexActivate, engine: EngineDep, settings: SettingsDep) -> IndexPublic:
    """Serve <index root>/<name> from now on (searches already running finish on the old index) and
    record it in <index root>/active-index.json, so that it is served after a restart too."""
    import indexer

    root = settings.build_root()
    if root is None:
        raise ConflictError("no_index_root", "the server has no index root to activate indexes from: "
                                             "set SBIR_INDEX_ROOT (--index-root)")
    directory = root / body.name
    if not (directory / MANIFEST_FILE).is_file():
        raise NotFoundError("unknown_index", f"there is no index named {body.name!r} under the index root {root}",
                            field="name")
    model = engine.model
    if model is None:
        raise NotReadyError("not_ready", "no model is loaded; an index is served with the served checkpoint")
    try:
        index = engine.open_index(directory)
    except indexer.IndexMismatchError as error:
        raise ConflictError("index_mismatch", f"{body.name}: {error}", field="name") from None
    except indexer.IndexerError as error:
        raise ConflictError("unusable_index", f"{body.name}: {error}", field="name") from None
    engine.swap_index(index)
    record_active(root, directory, settings.index_dir)
    with engine.lease() as lease:
        return _describe(lease.index, lease.model)


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
        "index_type": body.index_type, "tokens": body.tokens, "token_bytes": body.token_bytes, "device": settings.device,
        "activate": body.activate,
        # A manifest under a data root may still name photos elsewhere: the job checks every item.
        "data_roots": [str(root) for root in settings.data_roots],
    })
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobPublic.from_job(job)
