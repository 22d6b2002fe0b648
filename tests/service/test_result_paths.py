"""Each search result names the file that matched: the gallery's `key`, and the photo's `path`
relative to its gallery root unless SBIR_SHOW_PATHS hides it."""

from __future__ import annotations

import httpx
import pytest

import indexer
from service.main import create_app
from tests.support.api import running, search
from tests.support.images import sketch_png
from tests.support.server import Server


@pytest.fixture(scope="module")
def real_server(workspace, tmp_path_factory):
    started = Server(tmp_path_factory.mktemp("paths-server"), workspace.index_dir, workspace.checkpoint,
                     workspace.root)
    try:
        started.start(timeout=120).close()
        yield started
    finally:
        started.stop()


def test_results_carry_the_gallery_key_and_the_relative_path(real_server, workspace):
    with httpx.Client(base_url=real_server.base, timeout=60) as http:
        response = http.post("/search", params={"k": 8}, files={"sketch": ("s.png", sketch_png(), "image/png")})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 8
    with indexer.open(workspace.index_dir) as index:
        for result in results:
            record = index.record(result["image_id"])
            assert result["key"] == record.key == f"{record.label}/{record.path.rsplit('/', 1)[1]}"
            assert result["path"] == result["key"]  # a folder gallery: relative to its root, as the key
            assert (workspace.gallery / result["path"]).is_file()
    assert str(workspace.root) not in response.text  # no absolute server path leaks


def test_show_paths_off_hides_the_path_but_keeps_the_key(make_settings):
    with running(create_app(make_settings(show_paths=False))) as client:
        response = search(client, k=3)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [result["path"] for result in results] == [None, None, None]
    assert all(result["key"].endswith(".png") for result in results)
