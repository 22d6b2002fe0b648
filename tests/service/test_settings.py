"""Settings: SBIR_* environment, settings files, precedence, defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("SBIR_"):
            monkeypatch.delenv(name)


def test_defaults_bind_loopback_and_disable_admin(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    settings = load_settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.admin_token is None and settings.cors_origins == [] and settings.data_roots == []
    assert (settings.k_max, settings.shortlist_max, settings.device) == (200, 2000, "auto")
    # Never the working directory: without an index root, the user's state folder.
    assert settings.jobs_db_path() == tmp_path / "sbir" / "jobs.sqlite3"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert settings.jobs_db_path() == Path.home() / ".local" / "state" / "sbir" / "jobs.sqlite3"


def test_environment_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("SBIR_PORT", "9001")
    monkeypatch.setenv("SBIR_DATA_ROOTS", json.dumps([str(tmp_path), "/data"]))
    monkeypatch.setenv("SBIR_ADMIN_TOKEN", "s3cret")
    monkeypatch.setenv("SBIR_INDEX_DIR", str(tmp_path / "indexes" / "main"))
    monkeypatch.setenv("SBIR_CHECKPOINT", str(tmp_path / "model.pt"))
    settings = load_settings()
    assert settings.port == 9001
    assert settings.data_roots == [tmp_path, Path("/data")]
    assert settings.admin_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.build_root() == tmp_path / "indexes"
    assert settings.jobs_db_path() == tmp_path / "indexes" / "jobs.sqlite3"


def test_json_file_is_below_environment_and_overrides(monkeypatch, tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"port": 7000, "host": "0.0.0.0", "max_upload_bytes": 4096, "device": "cpu"}))
    monkeypatch.setenv("SBIR_HOST", "127.0.0.2")
    settings = load_settings(path, port=7100, checkpoint=None)
    assert settings.port == 7100  # override beats file
    assert settings.host == "127.0.0.2"  # environment beats file
    assert (settings.max_upload_bytes, settings.device) == (4096, "cpu")  # file beats defaults
    assert isinstance(settings, Settings)


def test_dotenv_file(tmp_path):
    path = tmp_path / "sbir.env"
    path.write_text('SBIR_PORT=8123\nSBIR_CORS_ORIGINS=["https://example.org"]\n')
    settings = load_settings(path)
    assert settings.port == 8123 and settings.cors_origins == ["https://example.org"]


@pytest.mark.parametrize("values", [
    {"port": 0}, {"k_max": 201}, {"shortlist_max": 5000}, {"device": "tpu"}, {"unknown_field": 1},
    {"index_dir": "/some/index"},  # an index without its checkpoint
])
def test_invalid_settings_are_refused(values):
    with pytest.raises(ValidationError):
        Settings(**values)


def test_missing_settings_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "nope.json")


def test_empty_path_variables_mean_unset(monkeypatch):
    monkeypatch.setenv("SBIR_INDEX_DIR", "")
    monkeypatch.setenv("SBIR_JOBS_DB", " ")
    settings = load_settings()
    assert settings.index_dir is None and settings.jobs_db is None
