"""The app factory: nothing built at import, CORS only when configured, the env factory."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from service.main import create_app, create_app_from_env
from tests.support.api import running


def test_importing_the_service_builds_nothing():
    import service.api.deps
    import service.engine
    import service.jobs
    import service.main

    built = {"FastAPI", "SearchEngine", "JobManager", "JobStore", "MetricsRegistry", "Settings", "QueryCache"}
    for module in (service.main, service.engine, service.jobs, service.api.deps):
        assert not any(type(value).__name__ in built for value in vars(module).values()), module


def test_cors_is_off_by_default_and_on_for_configured_origins(make_settings):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(make_settings(index_dir=None))) as client:
        assert "access-control-allow-origin" not in client.options("/search", headers=preflight).headers
    with TestClient(create_app(make_settings(index_dir=None, cors_origins=["https://app.example"]))) as client:
        response = client.options("/search", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
        other = client.options("/search", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_factory_from_environment(monkeypatch, workspace, tmp_path):
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps({"jobs_db": str(tmp_path / "jobs.db"), "device": "cpu"}))
    monkeypatch.setenv("SBIR_SETTINGS_FILE", str(settings_file))
    monkeypatch.setenv("SBIR_CHECKPOINT", str(workspace.checkpoint))
    monkeypatch.setenv("SBIR_INDEX_DIR", str(workspace.index_dir))
    app = create_app_from_env()
    assert app.state.settings.jobs_db == tmp_path / "jobs.db"
    with running(app) as client:
        assert client.get("/readyz").status_code == 200
    assert (tmp_path / "jobs.db").exists()
