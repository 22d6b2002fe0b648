"""Faults: the server killed (SIGKILL, no shutdown code runs) during an index build job and during
searches; a full disk and an unwritable output directory during a build. Afterwards the published
index is byte-for-byte intact and serves, jobs are failed with their reason, nothing half-built is
published."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

import indexer
from service.jobs import RESTART_REASON
from service.main import create_app
from tests.support.api import auth, running, wait_for
from tests.support.datasets import hash_tree as tree_digest
from tests.support.datasets import write_generic_dataset
from tests.support.images import sketch_png
from tests.support.server import Server


@pytest.fixture
def server(workspace, tmp_path):
    """A `Server` over a copy of the workspace's fp16 index (``tmp_path/indexes/main``), not yet started;
    ``tmp_path`` is its state folder and SBIR_INDEX_ROOT."""
    (tmp_path / "indexes").mkdir()
    shutil.copytree(workspace.index_dir, tmp_path / "indexes" / "main")
    started = Server(tmp_path, tmp_path / "indexes" / "main", workspace.checkpoint, workspace.root,
                     index_root=tmp_path / "indexes")
    yield started
    started.stop()


def search_ids(http: httpx.Client) -> list[int]:
    response = http.post("/search", params={"k": 8}, files={"sketch": ("s.png", sketch_png("circle"), "image/png")})
    assert response.status_code == 200, response.text
    return [hit["image_id"] for hit in response.json()["results"]]


def wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_server_killed_during_an_index_build(server):
    published = server.state / "indexes" / "main"
    before = tree_digest(published)
    with server.start() as http:
        expected = search_ids(http)
        response = http.post("/index/build", json={"gallery": "gallery", "name": "rebuilt"}, headers=auth())
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert wait_for(http, job_id, lambda job: job["state"] != "queued")["state"] == "running"
    server.kill()

    with sqlite3.connect(server.state / "jobs.sqlite3") as connection:
        (worker_pid,) = connection.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if worker_pid is not None:
        # The orphaned worker notices its server is gone and exits by itself.
        if not wait_gone(worker_pid):
            os.killpg(worker_pid, signal.SIGKILL)
            pytest.fail("the worker outlived its server by 30 s")

    with server.start() as http:
        job = http.get(f"/jobs/{job_id}").json()
        assert job["state"] == "failed" and job["error"] == RESTART_REASON, job
        assert search_ids(http) == expected
        assert http.get("/index").json()["name"] == "main"
    assert tree_digest(published) == before
    rebuilt = server.state / "indexes" / "rebuilt"
    if rebuilt.exists():  # published only if the worker got that far: then it must be whole
        with indexer.open(rebuilt) as index:
            assert len(index) == 8


def test_server_killed_during_searches(server):
    published = server.state / "indexes" / "main"
    before = tree_digest(published)
    outcomes: list[object] = []
    with server.start() as http:
        expected = search_ids(http)

        def hammer() -> None:
            with httpx.Client(base_url=server.base, timeout=30) as client:
                while True:
                    try:
                        search_ids(client)
                        outcomes.append("ok")
                    except httpx.TransportError as error:
                        outcomes.append(error)
                        return

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while outcomes.count("ok") < 8:  # searches are flowing
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.kill()
        for thread in threads:
            thread.join(30)
    assert sum(isinstance(outcome, httpx.TransportError) for outcome in outcomes) == 4  # cut mid-flight

    assert tree_digest(published) == before
    with server.start() as http:
        assert search_ids(http) == expected



def _train_body(run_dir: str, dataset: str, **schedule) -> dict:
    return {"config": {
        "run_dir": run_dir, "seed": 3, "model": {"name": "zse-tiny"},
        "data": {"dataset": "generic", "root": dataset, "num_workers": 0},
        "optim": {"lr": 1e-4}, "zse": {"batch_size": 2},
        "schedule": {"epochs": 1, "epoch_size": 2000, "log_every": 1, "checkpoint_every": 3, **schedule},
        "validation": {"enabled": False},
    }}


def _events(run_dir: Path) -> list[dict]:
    """The run's metrics log; a line still being appended (no newline yet) is left out."""
    import json

    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines() if line.strip()]


def test_server_killed_during_training_then_the_resubmitted_job_resumes(server, workspace):
    import torch

    dataset = f"generic-kill-{server.state.name}"
    write_generic_dataset(workspace.root / dataset)
    run_name = f"runs/killed-{server.state.name}"
    run_dir = workspace.root / run_name
    last = run_dir / "checkpoints" / "last.pt"
    with server.start() as http:
        response = http.post("/train", json=_train_body(run_name, dataset), headers=auth())  # 1,000 steps
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 240
        # Kill once a checkpoint is written and training has gone past it: the steps after it are lost.
        while not (last.is_file() and any(event.get("step", 0) >= 5 and "loss" in event
                                           for event in _events(run_dir))):
            job = http.get(f"/jobs/{job_id}").json()
            assert job["state"] in ("queued", "running"), job
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
    server.kill()
    with sqlite3.connect(server.state / "jobs.sqlite3") as connection:
        (worker_pid,) = connection.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if worker_pid is not None and not wait_gone(worker_pid):
        os.killpg(worker_pid, signal.SIGKILL)
        pytest.fail("the training worker outlived its server by 30 s")

    # What the interrupted run left: a whole last checkpoint (written atomically) at a multiple of
    # checkpoint_every, behind the last logged step.
    saved_step = torch.load(last, map_location="cpu", weights_only=False)["training_state"]["step"]
    logged_step = max(event["step"] for event in _events(run_dir) if "loss" in event)
    assert saved_step % 3 == 0 and 3 <= saved_step <= logged_step

    with server.start() as http:
        job = http.get(f"/jobs/{job_id}").json()
        assert job["state"] == "failed" and job["error"] == RESTART_REASON, job
        body = {**_train_body(run_name, dataset, max_steps=saved_step + 2), "resume": True}
        response = http.post("/train", json=body, headers=auth())
        assert response.status_code == 202, response.text
        job = wait_for(http, response.json()["id"], timeout=240, interval=0.2)
    assert job["state"] == "succeeded", job
    assert job["result"]["status"] == "completed" and job["result"]["step"] == saved_step + 2
    events = _events(run_dir)
    (resume,) = [event for event in events if event.get("event") == "resume"]
    assert resume["step"] == saved_step
    after = [event["step"] for event in events[events.index(resume):] if "loss" in event]
    assert after == [saved_step + 1, saved_step + 2]  # from the checkpoint on, not from step 1
    assert torch.load(last, map_location="cpu", weights_only=False)["training_state"]["step"] == saved_step + 2

# --- full disk, unwritable output -------------------------------------------------------------------

def _fail_writes_under(monkeypatch, folder: Path, error_number: int) -> None:
    """Every os.replace/os.rename/os.open-for-writing under `folder` raises OSError(error_number)."""
    real_replace, real_rename = os.replace, os.rename

    def refuse(real):
        def call(source, target, *args, **kwargs):
            if str(folder) in os.fspath(target) or str(folder) in os.fspath(source):
                raise OSError(error_number, os.strerror(error_number), os.fspath(target))
            return real(source, target, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "replace", refuse(real_replace))
    monkeypatch.setattr(os, "rename", refuse(real_rename))


def _leftovers(parent: Path) -> list[str]:
    return sorted(path.name for path in parent.iterdir() if ".staging-" in path.name or ".tmp-" in path.name)


@pytest.mark.parametrize("error_number", [errno.ENOSPC, errno.EACCES])
def test_disk_full_or_unwritable_fails_a_first_build_and_publishes_nothing(workspace, tmp_path, monkeypatch,
                                                                             error_number):
    out = tmp_path / "indexes" / "fresh"
    _fail_writes_under(monkeypatch, tmp_path / "indexes", error_number)
    with pytest.raises(OSError) as raised:
        indexer.build(workspace.gallery_small, workspace.checkpoint, out, device="cpu", num_workers=0, progress=False)
    assert raised.value.errno == error_number
    assert os.strerror(error_number) in str(raised.value)
    assert not out.exists()
    monkeypatch.undo()
    assert _leftovers(out.parent) == []


def test_disk_full_during_a_rebuild_keeps_the_old_index(workspace, tmp_path, monkeypatch):
    out = tmp_path / "indexes" / "main"
    out.parent.mkdir()
    shutil.copytree(workspace.index_dir, out)
    before = tree_digest(out)
    _fail_writes_under(monkeypatch, out.parent, errno.ENOSPC)
    with pytest.raises(OSError, match="No space left on device"):
        indexer.build(workspace.gallery_small, workspace.checkpoint, out, device="cpu", num_workers=0, progress=False)
    monkeypatch.undo()
    assert tree_digest(out) == before
    with indexer.open(out) as index:
        assert len(index) == 8
    assert _leftovers(out.parent) == []


def test_unwritable_index_root_fails_the_job_with_a_clear_message(make_settings, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the index root should be")
    settings = make_settings(index_root=blocker / "indexes")
    with running(create_app(settings)) as client:
        response = client.post("/index/build", json={"gallery": "gallery-small", "name": "x"}, headers=auth())
        assert response.status_code == 202, response.text
        job = wait_for(client, response.json()["id"], timeout=120, interval=0.3)
        assert job["state"] == "failed", job
        assert "Not a directory" in job["error"] and str(blocker) in job["error"], job["error"]
        assert client.get("/readyz").status_code == 200  # still serving the old index
    assert blocker.read_text() == "a file where the index root should be"
