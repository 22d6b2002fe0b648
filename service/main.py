"""The application factory: `create_app(settings)` wires settings, engine, jobs and metrics into
a FastAPI app. Nothing is built at import; `uvicorn --factory service.main:create_app_from_env`
builds the app from `SBIR_*` environment variables.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from service.active_index import record_active
from service.api.routes import evaluation, explain, health, images, indexes, jobs, search, training, web
from service.engine import SearchEngine
from service.errors import install_error_handlers
from service.jobs import Job, JobManager, JobStore
from service.metrics import MetricsRegistry
from service.service_metrics import RequestMetricsMiddleware, build_service_metrics
from service.settings import Settings, load_settings
from service.uploads import MULTIPART_OVERHEAD, BodySizeLimitMiddleware

logger = logging.getLogger("service")


def create_app(settings: Settings, *, engine: SearchEngine | None = None, job_manager: JobManager | None = None,
               load_in_background: bool = True) -> FastAPI:
    """Build the app. `engine` and `job_manager` default to ones made from `settings`.

    The lifespan loads the model and index (in a background thread unless `load_in_background` is
    False; /readyz answers 503 until both are loaded), fails jobs a previous server left running,
    and on shutdown stops running jobs and closes the index.
    """
    engine = engine or SearchEngine(settings)
    if job_manager is None:
        job_manager = JobManager(JobStore(settings.jobs_db_path()), max_concurrent=settings.max_concurrent_jobs)
    job_manager.on_success("index_build", _activate_built_index(engine, settings))
    metrics = build_service_metrics(MetricsRegistry(), index_size=lambda: _index_size(engine),
                                    job_counts=job_manager.store.counts)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logger.info("%s", settings.describe())
        job_manager.start()
        if load_in_background:
            engine.start_loading()
        else:
            engine.load()
        engine.start_watching(settings.index_watch_s)
        try:
            yield
        finally:
            job_manager.shutdown()
            engine.close()

    app = FastAPI(
        title="sbir-service",
        summary="Zero-shot sketch-based image retrieval: ANN shortlist, relation re-ranking, index builds.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.jobs = job_manager
    app.state.metrics = metrics

    install_error_handlers(app)
    for module in (search, images, explain, indexes, jobs, training, evaluation, health, web):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")

    # Added innermost first: metrics see every response, the body limit runs before any parsing.
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics, routes=app.router.routes)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory`: settings from the environment (and SBIR_SETTINGS_FILE)."""
    import os

    return create_app(load_settings(os.environ.get("SBIR_SETTINGS_FILE") or None))


def _index_size(engine: SearchEngine) -> int | None:
    summary = engine.index_summary()
    return None if summary is None else summary[1]


def _activate_built_index(engine: SearchEngine, settings: Settings):
    """Success hook of index builds: open the new directory and swap it in, when asked to, and
    remember it for the next start (`service.active_index`)."""

    def activate(job: Job) -> dict[str, Any]:
        if not job.params.get("activate", True):
            return {"activated": False}
        directory = Path((job.result or {}).get("index_dir") or job.params["out"])
        engine.swap_index(engine.open_index(directory))
        root = settings.build_root()
        if root is not None and directory.parent.absolute() == root.absolute():
            record_active(root, directory, settings.index_dir)
        return {"activated": True}

    return activate
