"""The job worker starts as `python -m service.job_worker` of the installed package, wherever the server runs."""

from __future__ import annotations

import time

from service import jobs
from service.jobs import JobManager, JobStore


def test_the_worker_environment_adds_no_pythonpath(monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setenv("SBIR_ADMIN_TOKEN", "secret")
    environment = jobs._worker_environment()
    assert "PYTHONPATH" not in environment
    assert "SBIR_ADMIN_TOKEN" not in environment
    assert environment["PYTHONUNBUFFERED"] == "1"


def test_a_worker_runs_from_outside_the_checkout_without_pythonpath(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)  # `-m` puts the working directory first on sys.path: not the checkout
    store = JobStore(tmp_path / "jobs.db")
    # Any importable two-argument callable is a work function; operator.is_ returns False, so the result is {}.
    manager = JobManager(store, work_functions={"index_build": "operator:is_"})
    manager.start()
    try:
        job = manager.submit("index_build", {})
        deadline = time.monotonic() + 60
        while not (store.get(job.id) or job).finished and time.monotonic() < deadline:
            time.sleep(0.05)
        done = store.get(job.id)
    finally:
        manager.shutdown()
    assert done is not None and (done.state, done.error, done.result) == ("succeeded", None, {})
    log = (tmp_path / "job-logs" / f"{job.id}.log").read_text()
    assert f"job {job.id}: index_build" in log and "result: {}" in log
