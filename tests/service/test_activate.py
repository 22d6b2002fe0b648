"""POST /index/activate, the reload of a republished index (`sbir index add`), and the active index
surviving a restart: against `sbir serve` on a free port, with searches running throughout."""

from __future__ import annotations

import json
import threading
import time

import httpx

import indexer
from service.active_index import STATE_FILE
from tests.support.api import assert_error, auth
from tests.support.checkpoints import write_checkpoint
from tests.support.datasets import write_gallery
from tests.support.images import sketch_png
from tests.support.server import Server


class Searching:
    """Searches in a loop on their own client until stopped; every status seen."""

    def __init__(self, base: str) -> None:
        self.base, self.statuses, self.stop = base, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as http:
            while not self.stop.is_set():
                response = http.post("/search", params={"k": 3},
                                     files={"sketch": ("s.png", sketch_png(), "image/png")})
                self.statuses.append(response.status_code)

    def __enter__(self) -> Searching:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(60)


def wait_until(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_activate_reload_after_add_and_restart_with_zero_failed_searches(workspace, tmp_path):
    root = tmp_path / "indexes"
    build = dict(device="cpu", num_workers=0, progress=False)
    indexer.build(workspace.gallery_small, workspace.checkpoint, root / "small", tokens="fp16", **build)
    other = write_checkpoint(tmp_path / "other.pt", "zse-tiny", seed=1)
    indexer.build(workspace.gallery_small, other, root / "foreign", tokens="none", **build)
    server = Server(tmp_path / "state", workspace.index_dir, workspace.checkpoint, workspace.root, index_root=root)
    server.state.mkdir()
    http = server.start(timeout=120)
    try:
        assert http.get("/index").json()["name"] == "main"
        with Searching(server.base) as searching:
            activated = http.post("/index/activate", json={"name": "small"}, headers=auth())
            assert activated.status_code == 200, activated.text
            assert (activated.json()["name"], activated.json()["size"]) == ("small", 5)
            wait_until(lambda: len(searching.statuses) >= 3)

            # `sbir index add` republishes the served directory; the server picks it up by itself.
            extra = tmp_path / "extra"
            write_gallery(extra, 3, seed=300)
            indexer.add(root / "small", extra, workspace.checkpoint, **build)
            wait_until(lambda: http.get("/index").json()["size"] == 8)
            count = len(searching.statuses)
            wait_until(lambda: len(searching.statuses) >= count + 3)
        assert searching.statuses and set(searching.statuses) == {200}, searching.statuses
        state = json.loads((root / STATE_FILE).read_text())
        assert state["name"] == "small"

        assert_error(http.post("/index/activate", json={"name": "nothing"}, headers=auth()), 404, "unknown_index")
        error = assert_error(http.post("/index/activate", json={"name": "foreign"}, headers=auth()), 409,
                             "index_mismatch")
        assert "foreign" in error["message"]
        assert_error(http.post("/index/activate", json={"name": "../x"}, headers=auth()), 422, "validation_error")
        assert_error(http.post("/index/activate", json={"name": "small"}), 401, "unauthorized")
        assert http.get("/index").json()["name"] == "small"  # the refusals changed nothing
    finally:
        http.close()
        server.stop()

    http = server.start(timeout=120)  # same settings: the activated index is served again
    try:
        assert (http.get("/index").json()["name"], http.get("/index").json()["size"]) == ("small", 8)
    finally:
        http.close()
        server.stop()


def test_a_republished_index_of_another_checkpoint_is_refused_and_the_old_one_stays(make_settings, workspace,
                                                                                   tmp_path, caplog):
    from service.main import create_app
    from tests.support.api import running, search

    build = dict(device="cpu", num_workers=0, progress=False)
    served = indexer.build(workspace.gallery_small, workspace.checkpoint, tmp_path / "indexes" / "served", **build)
    app = create_app(make_settings(index_dir=served, index_watch_s=0))  # reloads called by hand below
    with running(app) as client:
        engine = app.state.engine
        assert engine.reload_if_changed() is False  # unchanged
        other = write_checkpoint(tmp_path / "other.pt", "zse-tiny", seed=1)
        indexer.build(workspace.gallery, other, served, **build)
        assert engine.reload_if_changed() is False
        assert "cannot be served (still serving the previous one)" in caplog.text
        assert client.get("/index").json()["size"] == 5 and search(client, k=2).status_code == 200
        indexer.build(workspace.gallery, workspace.checkpoint, served, **build)
        assert engine.reload_if_changed() is True
        assert client.get("/index").json()["size"] == 8 and search(client, k=2).status_code == 200
