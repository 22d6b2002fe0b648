"""Security properties the service suite does not already pin down: how the token is compared and
where it could leak, path confinement of every path-bearing field, upload names, CORS, limits."""

from __future__ import annotations

import ast
import hmac
import inspect
import logging
import os
import tempfile
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.api import deps
from service.main import create_app
from service.settings import Settings
from tests.support import images
from tests.support.api import ADMIN_TOKEN, assert_error, auth, running, wait_for

UNKNOWN_JOB = "/jobs/00000000000000000000000000000000"


# --- the bearer token ---------------------------------------------------------------------------

def test_token_check_uses_compare_digest_on_every_attempt(client, monkeypatch):
    calls: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(presented, expected):
        calls.append((presented, expected))
        return real_compare(presented, expected)

    monkeypatch.setattr(deps.hmac, "compare_digest", spy)
    attempts = {"wrong": 403, ADMIN_TOKEN[:-1]: 403, ADMIN_TOKEN + "x": 403, ADMIN_TOKEN.upper(): 403,
                "x" * 4096: 403, ADMIN_TOKEN: 404}  # 404: authorised, the job just does not exist
    for token, status in attempts.items():
        assert client.delete(UNKNOWN_JOB, headers=auth(token)).status_code == status, token
    # Every presented token went through compare_digest, as bytes, against the configured one.
    assert [presented for presented, _ in calls] == [token.encode() for token in attempts]
    assert {expected for _, expected in calls} == {ADMIN_TOKEN.encode()}
    # Non-ASCII bytes in the header are refused, never a 500 (bytes compare, no str encoding step).
    raw = client.delete(UNKNOWN_JOB, headers={"Authorization": b"Bearer " + "ünï".encode()})
    assert_error(raw, 403, "forbidden")


def test_token_check_has_no_short_circuit_comparison():
    # Code-level guard: the guard's source compares with compare_digest and never with == / startswith,
    # which return early at the first differing byte.
    tree = ast.parse(textwrap.dedent(inspect.getsource(deps.require_admin)))
    secret_names = {"presented", "expected"}

    def mentions_secret(node: ast.AST) -> bool:
        return any(isinstance(sub, ast.Name) and sub.id in secret_names for sub in ast.walk(node))

    comparisons = [node for node in ast.walk(tree) if isinstance(node, ast.Compare) and mentions_secret(node)]
    assert comparisons == []
    prefix_checks = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                     and node.attr in ("startswith", "endswith", "find") and mentions_secret(node)]
    assert prefix_checks == []
    digest_calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
                    and ast.unparse(node.func) == "hmac.compare_digest"]
    assert len(digest_calls) == 1 and all(mentions_secret(argument) for argument in digest_calls[0].args)


def test_token_is_never_logged_on_success_or_failure(make_settings, workspace, caplog):
    caplog.set_level(logging.DEBUG)
    settings = make_settings()
    with running(create_app(settings)) as client:
        for token in (ADMIN_TOKEN, "wrong-" + ADMIN_TOKEN):
            client.delete(UNKNOWN_JOB, headers=auth(token))
            client.post("/index/build", json={"gallery": "gallery-small", "name": "tok"}, headers=auth(token))
        for job in client.get("/jobs").json()["jobs"]:
            client.delete(f"/jobs/{job['id']}", headers=auth())
        text = repr(client.app.state.settings) + str(client.app.state.settings.model_dump())
        assert ADMIN_TOKEN not in text  # SecretStr hides it from settings dumps and reprs
    assert ADMIN_TOKEN not in caplog.text
    log_dir = settings.jobs_db_path().parent / "job-logs"
    for log_file in log_dir.glob("*.log"):
        assert ADMIN_TOKEN not in log_file.read_text(errors="replace")


# --- paths ----------------------------------------------------------------------------------------

@pytest.fixture
def outside(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("outside")
    (folder / "cls").mkdir()
    images.drawing().save(folder / "cls" / "secret.png")
    return folder


@pytest.mark.parametrize("name", ["../escape", "/tmp/escape", ".hidden", "a/b", "..", "x" * 65, "", "a\x00b"])
def test_index_names_cannot_leave_the_index_root(client, name):
    response = client.post("/index/build", json={"gallery": "gallery-small", "name": name}, headers=auth())
    assert_error(response, 422, "validation_error")


@pytest.mark.parametrize("run_dir", ["../runs", "/tmp/sbir-run-outside", "runs/../../x"])
def test_training_run_dir_is_confined(client, run_dir):
    body = {"config": {"run_dir": run_dir, "data": {"dataset": "generic", "root": "gallery"}}}
    status = 400 if ".." in run_dir else 403
    error = assert_error(client.post("/train", json=body, headers=auth()), status)
    assert error["field"] == "config.run_dir"


def test_evaluate_unseen_file_and_root_are_confined(client, outside):
    for field, value in (("root", str(outside)), ("unseen", str(outside / "cls" / "secret.png"))):
        body = {"dataset": "generic", "root": "gallery", field: value}
        error = assert_error(client.post("/evaluate", json=body, headers=auth()), 403, "path_outside_data_roots")
        assert error["field"] == field


def test_symlinked_file_inside_a_root_pointing_out_is_403(make_settings, workspace, outside, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside / "cls" / "secret.png", root / "manifest.csv")
    with running(create_app(make_settings(data_roots=[root]))) as client:
        response = client.post("/index/build", json={"gallery": "manifest.csv", "name": "m"}, headers=auth())
        assert_error(response, 403, "path_outside_data_roots")


@pytest.mark.parametrize("path", ["/images/..%2F..%2Fetc%2Fpasswd", "/images/-1", "/images/%2Fetc%2Fpasswd",
                                  "/jobs/..%2F..%2Fjobs.sqlite3", "/explain/..%2Fx/0"])
def test_ids_in_urls_are_ids_not_paths(client, path):
    response = client.get(path)
    assert response.status_code in (404, 422), response.text
    assert b"root:" not in response.content and not response.headers["content-type"].startswith("image/")


def test_manifest_entries_are_confined_to_the_data_roots(make_settings, workspace, outside, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "manifest.csv").write_text(f"path,label\n{outside / 'cls' / 'secret.png'},secret\n")
    with running(create_app(make_settings(data_roots=[root]))) as client:
        response = client.post("/index/build", json={"gallery": "manifest.csv", "name": "m", "activate": True},
                               headers=auth())
        if response.status_code != 202:
            return  # refused up front: confined
        job = wait_for(client, response.json()["id"], timeout=120, interval=0.5)
        assert job["state"] == "failed", job
        assert "outside the data roots" in job["error"] and "secret.png" in job["error"]


# --- uploads ----------------------------------------------------------------------------------------

def _snapshot(*folders: Path) -> set[Path]:
    found: set[Path] = set()
    for folder in folders:
        for directory, _, files in os.walk(folder):
            found.update(Path(directory) / name for name in files)
    return found


@pytest.mark.parametrize("filename", ["../../etc/passwd", "/tmp/sbir-owned.png", "..\\..\\evil.png",
                                      "sketch.png\x00.sh", "C:\\Windows\\evil.png"])
def test_uploads_are_never_written_under_client_names(client, served, workspace, filename):
    settings = served[0].state.settings
    watched = [workspace.root, settings.jobs_db_path().parent, Path(tempfile.gettempdir())]
    before = _snapshot(*watched)
    # 2 MB: past the multipart parser's in-memory spool (1 MB), so it does touch the disk.
    png = images.encode(images.drawing(), "PNG") + b"\x00" * (2 * 1024 * 1024)
    response = client.post("/search", params={"k": 2}, files={"sketch": (filename, png, "image/png")})
    assert response.status_code == 200, response.text
    created = _snapshot(*watched) - before
    leaf = filename.replace("\\", "/").rsplit("/", 1)[-1].split("\x00")[0]
    assert not [path for path in created if path.name == leaf or "passwd" in str(path) or "sbir-owned" in str(path)]
    assert not [path for path in created if path.is_relative_to(workspace.root)]
    assert not Path("/tmp/sbir-owned.png").exists()


# --- CORS ---------------------------------------------------------------------------------------------

def _preflight(client, origin: str):
    return client.options("/search", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})


def test_cors_is_off_by_default(client):
    assert Settings().cors_origins == []
    for response in (client.get("/healthz", headers={"Origin": "https://evil.example"}),
                     _preflight(client, "https://evil.example")):
        assert not any(name.lower().startswith("access-control-") for name in response.headers)


def test_cors_allows_only_the_configured_origins(make_settings):
    with running(create_app(make_settings(cors_origins=["https://app.example"]))) as client:
        allowed = _preflight(client, "https://app.example")
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert client.get("/healthz", headers={"Origin": "https://app.example"}).headers[
            "access-control-allow-origin"] == "https://app.example"
        denied = client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in denied.headers
        assert _preflight(client, "https://evil.example").status_code == 400


# --- limits ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value"), [("k_max", 201), ("shortlist_max", 2001), ("max_upload_bytes", 10),
                                              ("max_pixels", 0), ("max_concurrent_jobs", 0),
                                              ("max_concurrent_jobs", 65), ("thumbnail_max", 8192)])
def test_limits_cannot_be_configured_past_their_caps(field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_configured_limits_are_enforced_per_request(make_settings):
    settings = make_settings(k_max=3, shortlist_max=5, max_upload_bytes=4096, max_pixels=10_000)
    with running(create_app(settings)) as client:
        def post(payload: bytes = images.encode(images.drawing(size=90), "PNG"), **params):
            return client.post("/search", params=params, files={"sketch": ("s.png", payload, "image/png")})

        assert len(post(k=3).json()["results"]) == 3
        assert_error(post(k=4), 422, "validation_error")
        assert post(k=3, shortlist=5).status_code == 200
        assert_error(post(shortlist=6), 422, "validation_error")
        assert_error(post(images.encode(images.drawing(size=101), "PNG")), 413, "too_many_pixels")
        assert_error(post(b"\x89PNG" + b"\x00" * 5000), 413, "upload_too_large")
        # A plain request (no k, no shortlist) still works: the defaults shrink to the limits.
        assert len(post().json()["results"]) == 3
