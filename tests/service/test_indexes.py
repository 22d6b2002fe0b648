"""POST /index/build through the real indexer in a worker process, swapping the served index."""

from __future__ import annotations

import re
import threading
import time

import numpy as np

import indexer
from service.engine import SearchEngine
from service.main import create_app
from tests.support.api import assert_error, auth, running, search, wait_for
from tests.support.images import sketch_png


def test_build_job_reports_progress_and_swaps_the_index_while_searches_go_on(make_settings, tmp_path):
    app = create_app(make_settings())
    statuses: list[int] = []
    served_by: list[tuple[str, int]] = []
    stop = threading.Event()

    with running(app) as client:
        def keep_searching() -> None:
            png = sketch_png("square")
            while not stop.is_set():
                response = search(client, png, k=3)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    index = response.json()["index"]
                    served_by.append((index["name"], index["size"]))

        searcher = threading.Thread(target=keep_searching)
        searcher.start()
        try:
            created = client.post("/index/build", headers=auth(),
                                  json={"gallery": "gallery-small", "name": "small", "tokens": "int8"})
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            seen: list[float] = []
            job = wait_for(client, job_id, lambda j: seen.append(j["progress"]) or j["state"] in
                           ("succeeded", "failed", "cancelled"), timeout=120)
            time.sleep(0.5)  # a few searches on the new index
        finally:
            stop.set()
            searcher.join()

        assert job["state"] == "succeeded", job
        assert job["progress"] == 1.0
        assert seen == sorted(seen)  # progress never goes back
        assert job["result"]["activated"] is True and job["result"]["size"] == 5
        assert job["result"]["index_dir"] == str(tmp_path / "indexes" / "small")
        logged = [float(v) for v in re.findall(r"\[progress ([0-9.]+)\]", "\n".join(job["log_tail"]))]
        assert logged and logged == sorted(logged) and any(0 < value < 1 for value in logged)

        assert statuses and set(statuses) == {200}, statuses  # no search failed during the build or the swap
        assert served_by[0] == ("main", 8) and served_by[-1] == ("small", 5)
        assert client.get("/index").json()["name"] == "small"
        assert client.get("/readyz").json()["index"] == {"name": "small", "size": 5}
        with indexer.open(tmp_path / "indexes" / "small") as built:
            assert built.manifest["tokens"]["format"] == "int8"

        # The same name again is a conflict, before any job is queued.
        assert_error(client.post("/index/build", headers=auth(), json={"gallery": "gallery-small", "name": "small"}),
                     409, "index_exists")


def test_build_of_a_bad_gallery_fails_the_job_with_the_indexer_message(make_settings, workspace):
    (workspace.root / "empty-gallery").mkdir(exist_ok=True)
    with running(create_app(make_settings())) as client:
        job_id = client.post("/index/build", headers=auth(), json={"gallery": "empty-gallery", "name": "e"}).json()["id"]
        job = wait_for(client, job_id, lambda j: j["state"] in ("succeeded", "failed"), timeout=120)
        assert job["state"] == "failed"
        assert job["error"].startswith("gallery is empty")
        assert client.get("/index").json()["name"] == "main"  # nothing was swapped


def test_in_flight_requests_finish_on_the_old_index(make_settings, workspace):
    engine = SearchEngine(make_settings())
    engine.load()
    closed: list[str] = []
    vector = np.ones((1, 96), dtype=np.float32)
    with engine.lease() as lease:
        old = lease.index
        real_close = old.close
        old.close = lambda: (closed.append(old.name), real_close())
        engine.swap_index(engine.open_index(workspace.index_dir_no_tokens))
        assert engine.index_summary() == ("main-no-tokens", 8)  # new requests get the new one
        assert old.search(vector, 3)[0].shape == (1, 3)  # still usable: this request holds it
        assert closed == []
    assert closed == ["main"]  # closed when its last user left
    with engine.lease() as lease:
        assert lease.index is not old and not lease.index.has_tokens
    engine.close()


def test_build_requests_are_validated(client):
    for body in ({"gallery": "gallery", "name": "../escape"}, {"gallery": "gallery", "name": ".hidden"},
                 {"gallery": "gallery", "name": "ok", "tokens": "fp64"},
                 {"gallery": "gallery", "name": "ok", "index_type": "Flat; rm -rf /"},
                 {"gallery": "gallery"}, {"name": "ok"}):
        assert_error(client.post("/index/build", json=body, headers=auth()), 422, "validation_error")
