"""The job machinery: SQLite store, worker processes, cancel, restart recovery, train and evaluate jobs."""

from __future__ import annotations

import os
import time

import pytest

from service.jobs import RESTART_REASON, JobManager, JobStore
from service.main import create_app
from tests.support.api import assert_error, auth, running, wait_for
from tests.support.datasets import write_generic_dataset

TEST_WORK = {
    "train": "tests.service.work_functions:slow",
    "evaluate": "tests.service.work_functions:fail",
    "index_build": "tests.service.work_functions:environment",
}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def test_jobs_app(make_settings, tmp_path):
    settings = make_settings(index_dir=None, max_concurrent_jobs=1)
    manager = JobManager(JobStore(settings.jobs_db_path()), work_functions=TEST_WORK, max_concurrent=1)
    return create_app(settings, job_manager=manager)


TRAIN_BODY = {"config": {"run_dir": "runs/x", "model": {"name": "zse-tiny"},
                         "data": {"dataset": "generic", "root": "gallery"}}}
EVALUATE_BODY = {"dataset": "generic", "root": "gallery"}


def test_store_transitions_and_counts(tmp_path):
    store = JobStore(tmp_path / "jobs.db")
    job = store.create("train", {"a": 1})
    assert (job.state, job.progress, job.params) == ("queued", 0.0, {"a": 1})
    assert store.mark_running(job.id, str(tmp_path / "log"))
    assert not store.mark_running(job.id, "again")  # only from queued
    store.set_progress(job.id, 1.7, "too far")
    assert store.get(job.id).progress == 1.0
    assert store.finish(job.id, "succeeded", result={"x": 2})
    assert not store.finish(job.id, "failed", error="late")  # final states are final
    done = store.get(job.id)
    assert (done.state, done.result, done.error) == ("succeeded", {"x": 2}, None)
    assert store.counts() == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0}
    with pytest.raises(ValueError):
        store.finish(job.id, "running")


def test_restart_marks_a_running_job_failed(make_settings):
    settings = make_settings(index_dir=None)
    store = JobStore(settings.jobs_db_path())
    orphan = store.create("index_build", {"name": "x"})
    store.mark_running(orphan.id, "/nonexistent.log")  # the server "died" here
    queued = store.create("train", {})
    with running(create_app(settings)) as client:
        job = client.get(f"/jobs/{orphan.id}").json()
        assert job["state"] == "failed"
        assert job["error"] == RESTART_REASON == "server restarted while the job was running"
        assert job["finished_at"] is not None
        assert client.get(f"/jobs/{queued.id}").json()["state"] == "failed"
        listed = client.get("/jobs", params={"state": "failed"}).json()["jobs"]
        assert {j["id"] for j in listed} == {orphan.id, queued.id}


def test_running_job_reports_progress_and_cancel_terminates_it(test_jobs_app):
    with running(test_jobs_app) as client:
        created = client.post("/train", json=TRAIN_BODY, headers=auth())
        assert created.status_code == 202, created.text
        assert created.headers["location"] == f"/jobs/{created.json()['id']}"
        job_id = created.json()["id"]
        job = wait_for(client, job_id, lambda j: j["state"] == "running" and j["progress"] >= 0.03)
        assert job["message"].startswith("step")
        pid = test_jobs_app.state.jobs.store.get(job_id).pid
        assert pid_alive(pid)

        cancelled = client.delete(f"/jobs/{job_id}", headers=auth())
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        deadline = time.monotonic() + 15
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(pid)
        job = wait_for(client, job_id, lambda j: test_jobs_app.state.jobs.running_count() == 0)
        assert job["state"] == "cancelled" and job["error"] == "cancelled by request"
        assert any("step" in line for line in job["log_tail"])
        assert_error(client.delete(f"/jobs/{job_id}", headers=auth()), 409, "job_finished")


def test_jobs_queue_beyond_the_concurrency_limit(test_jobs_app):
    with running(test_jobs_app) as client:
        first = client.post("/train", json=TRAIN_BODY, headers=auth()).json()["id"]
        second = client.post("/train", json=TRAIN_BODY, headers=auth()).json()["id"]
        wait_for(client, first, lambda j: j["state"] == "running")
        assert client.get(f"/jobs/{second}").json()["state"] == "queued"
        assert client.delete(f"/jobs/{second}", headers=auth()).json()["state"] == "cancelled"
        client.delete(f"/jobs/{first}", headers=auth())
        states = {j["id"]: j["state"] for j in client.get("/jobs").json()["jobs"]}
        assert states == {first: "cancelled", second: "cancelled"}


def test_worker_failure_is_recorded_with_its_reason(test_jobs_app):
    with running(test_jobs_app) as client:
        job_id = client.post("/evaluate", json=EVALUATE_BODY, headers=auth()).json()["id"]
        job = wait_for(client, job_id, lambda j: j["state"] == "failed")
        assert job["error"] == "RuntimeError: boom"
        assert any("Traceback" in line for line in job["log_tail"]) or "boom" in "\n".join(job["log_tail"])


def test_worker_does_not_inherit_the_admin_token(test_jobs_app, monkeypatch, workspace):
    monkeypatch.setenv("SBIR_ADMIN_TOKEN", "must-not-leak")
    with running(test_jobs_app) as client:
        body = {"gallery": "gallery-small", "name": "envcheck"}
        job_id = client.post("/index/build", json=body, headers=auth()).json()["id"]
        job = wait_for(client, job_id, lambda j: j["state"] in ("succeeded", "failed"))
        assert job["result"]["admin_token_seen"] is None


def test_train_and_evaluate_jobs_complete_through_the_api(make_settings, workspace):
    dataset = workspace.root / "generic-jobs"
    write_generic_dataset(dataset)
    (workspace.root / "unseen.txt").write_text("triangle\ncross\n")
    train_body = {"config": {
        "run_dir": "runs/api-train", "seed": 1, "model": {"name": "zse-tiny"},
        "data": {"dataset": "generic", "root": "generic-jobs", "unseen": "unseen.txt", "num_workers": 0},
        "optim": {"lr": 1e-4}, "zse": {"batch_size": 2},
        "schedule": {"epochs": 1, "epoch_size": 4, "log_every": 1},
        "validation": {"enabled": True, "quick": False, "batch_size": 8},
    }}
    with running(create_app(make_settings())) as client:
        created = client.post("/train", json=train_body, headers=auth())
        assert created.status_code == 202, created.text
        params = created.json()["params"]["config"]
        assert params["data"]["root"] == str(dataset) and params["run_dir"] == str(workspace.root / "runs/api-train")
        job = wait_for(client, created.json()["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=240)
        assert job["state"] == "succeeded", job
        assert job["result"]["status"] == "completed" and job["result"]["step"] == 2
        best = workspace.root / "runs/api-train/checkpoints/best.pt"
        assert best.is_file()

        evaluate_body = {"dataset": "generic", "root": "generic-jobs", "unseen": "unseen.txt",
                         "checkpoint": str(best), "retrieval": "two-stage", "shortlist": 3}
        created = client.post("/evaluate", json=evaluate_body, headers=auth())
        assert created.status_code == 202, created.text
        job = wait_for(client, created.json()["id"], lambda j: j["state"] in ("succeeded", "failed"), timeout=240)
        assert job["state"] == "succeeded", job
        report = job["result"]
        assert set(report["metrics"]) >= {"map_all", "map_200", "prec_100", "prec_200"}
        assert set(report["metrics_standard"]) >= {"map_all", "map_200", "prec_100", "prec_200"}
        assert 0.0 <= report["metrics"]["map_all"] <= 1.0


def test_train_config_errors_name_the_key(client):
    body = {"config": {**TRAIN_BODY["config"], "optim": {"lr": "fast"}}}
    error = assert_error(client.post("/train", json=body, headers=auth()), 422, "invalid_config")
    assert "optim.lr" in error["message"]
    body = {"config": {**TRAIN_BODY["config"], "surprise": 1}}
    assert "surprise" in assert_error(client.post("/train", json=body, headers=auth()), 422, "invalid_config")["message"]


@pytest.mark.parametrize("body", [
    {},
    {"config": "not a dict"},
    {"config": {}, "surprise": 1},
])
def test_invalid_train_bodies_are_422(client, body):
    assert_error(client.post("/train", json=body, headers=auth()), 422, "validation_error")


@pytest.mark.parametrize("body", [
    {"dataset": "imagenet", "root": "gallery"},
    {"dataset": "sketchy25"},
    {"dataset": "sketchy25", "root": "gallery", "retrieval": "semantic"},
    {"dataset": "sketchy25", "root": "gallery", "shortlist": 0},
    {"dataset": "sketchy25", "root": "gallery", "surprise": 1},
])
def test_invalid_evaluate_bodies_are_422(client, body):
    assert_error(client.post("/evaluate", json=body, headers=auth()), 422, "validation_error")
