"""Admin token on every state-changing endpoint; request paths confined to the data roots."""

from __future__ import annotations

import logging
import os

import pytest

from service.main import create_app
from tests.support.api import ADMIN_TOKEN, assert_error, running

STATE_CHANGING = [
    ("post", "/index/build", {"gallery": "gallery-small", "name": "x"}),
    ("post", "/index/activate", {"name": "x"}),
    ("post", "/train", {"config": {"run_dir": "runs/x", "data": {"dataset": "generic", "root": "gallery"}}}),
    ("post", "/evaluate", {"dataset": "sketchy25", "root": "gallery"}),
    ("delete", "/jobs/some-job", None),
]


def call(client, method: str, path: str, body, headers=None):
    return client.request(method.upper(), path, json=body, headers=headers or {})


@pytest.mark.parametrize(("method", "path", "body"), STATE_CHANGING)
def test_missing_token_is_401(client, method, path, body):
    response = call(client, method, path, body)
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "body"), STATE_CHANGING)
@pytest.mark.parametrize("header", [f"Bearer {ADMIN_TOKEN}x", "Bearer wrong", f"Basic {ADMIN_TOKEN}",
                                    "Bearer t\u00f6ken".encode(), f"Bearer {ADMIN_TOKEN[:-1]}"])
def test_wrong_token_is_refused(client, method, path, body, header):
    response = call(client, method, path, body, {"Authorization": header})
    assert response.status_code in (401, 403)
    assert_error(response, response.status_code)


def test_without_a_configured_token_state_changes_are_disabled(make_settings, caplog):
    with running(create_app(make_settings(admin_token=None))) as client:
        for method, path, body in STATE_CHANGING:
            for headers in ({}, {"Authorization": "Bearer anything"}, {"Authorization": "Bearer "}):
                error = assert_error(call(client, method, path, body, headers), 403, "admin_disabled")
                assert "disabled" in error["message"]
        assert client.get("/jobs").status_code == 200  # reading stays open


def test_empty_token_setting_means_disabled(make_settings):
    assert make_settings(admin_token="  ").admin_token is None


def test_token_never_appears_in_logs_or_errors(client, caplog):
    caplog.set_level(logging.DEBUG)
    response = call(client, "post", "/train", {"config": {"run_dir": "r", "data": {"dataset": "generic", "root": "/etc"}}},
                    {"Authorization": "Bearer wrong-guess"})
    assert ADMIN_TOKEN not in response.text
    assert ADMIN_TOKEN not in caplog.text and "wrong-guess" not in caplog.text


@pytest.fixture
def outside(tmp_path_factory):
    """A folder outside the data root with a photo in it."""
    folder = tmp_path_factory.mktemp("outside")
    (folder / "cls").mkdir()
    (folder / "cls" / "a.png").write_bytes(b"not really")
    return folder


def build(client, gallery: str):
    return client.post("/index/build", json={"gallery": gallery, "name": "escape-test"},
                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


@pytest.mark.parametrize(("gallery", "words"), [
    ("~no-such-user-sbir/gallery", "unknown home directory"),  # found by the long fuzz run: was a 500
    ("x" * 5000, "unusable path"),  # ENAMETOOLONG from the file system
])
def test_unusable_paths_are_400_naming_the_field(client, gallery, words):
    error = assert_error(build(client, gallery), 400, "invalid_path")
    assert error["field"] == "gallery" and words in error["message"]
    evaluate = client.post("/evaluate", json={"dataset": "generic", "root": gallery},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert assert_error(evaluate, 400, "invalid_path")["field"] == "root"


def test_parent_components_are_400(client):
    for gallery in ("../gallery", "gallery/../../etc", "gallery/..", "..\\..\\etc"):
        error = assert_error(build(client, gallery), 400, "invalid_path")
        assert error["field"] == "gallery" and "gallery" in error["message"]


def test_absolute_path_outside_the_roots_is_403(client, outside):
    for gallery in (str(outside), "/etc", "/"):
        error = assert_error(build(client, gallery), 403, "path_outside_data_roots")
        assert error["field"] == "gallery"


def test_symlink_escape_is_403(make_settings, workspace, outside, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "innocent")
    os.symlink(workspace.gallery, root / "linked-inside")  # a link that stays inside a root is fine
    with running(create_app(make_settings(data_roots=[root, workspace.root]))) as client:
        assert_error(build(client, "innocent"), 403, "path_outside_data_roots")
        assert_error(build(client, str(root / "innocent" / "cls")), 403, "path_outside_data_roots")
        response = client.post("/train", json={"config": {"run_dir": "runs/x",
                                                          "data": {"dataset": "generic", "root": "innocent"}}},
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert assert_error(response, 403, "path_outside_data_roots")["field"] == "config.data.root"
        assert build(client, "linked-inside").status_code == 202


def test_missing_path_and_no_roots(make_settings, client):
    assert_error(build(client, "no-such-gallery"), 400, "path_not_found")
    with running(create_app(make_settings(data_roots=[]))) as bare:
        assert_error(build(bare, "gallery"), 403, "no_data_roots")


def test_checkpoint_paths_are_confined_too(client, outside):
    body = {"dataset": "sketchy25", "root": "gallery", "checkpoint": str(outside / "cls" / "a.png")}
    error = assert_error(client.post("/evaluate", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}),
                         403, "path_outside_data_roots")
    assert error["field"] == "checkpoint"
