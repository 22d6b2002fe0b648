"""`sbir serve` set-up: its flags and help, one-line settings errors, the start-up line saying what is
enabled, a permanent load error (checkpoint and index disagree) ending the process, where the job
store goes, and the admin endpoints as a new user meets them (a missing data root, the server's own
weights as a training init)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.cli import main
from service.settings import Settings
from tests.support.api import assert_error
from tests.support.checkpoints import write_checkpoint
from tests.support.datasets import write_generic_dataset
from tests.support.server import PROJECT_ROOT, free_port


@pytest.fixture
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SBIR_"):
            monkeypatch.delenv(name)


def serve(args: list[str], cwd: Path, **environment: str) -> tuple[subprocess.Popen, str, Path]:
    """`python -m service.cli serve ARGS --port FREE` in `cwd` with only the given SBIR_* variables."""
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("SBIR_")}
    env.update(PYTHONPATH=str(PROJECT_ROOT), SBIR_DEVICE="cpu", **environment)
    log = cwd / "serve.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", *args, "--port", str(port)],
                                   cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    return process, f"http://127.0.0.1:{port}", log


def wait_healthy(process: subprocess.Popen, base: str, log: Path, timeout: float = 120.0) -> None:
    """Until GET /healthz answers 200 (the process must stay up meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_help_names_the_admin_flags_and_every_setting(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--admin-token-file", "--data-root", "--index-root"):
        assert flag in text
    missing = [f"SBIR_{name.upper()}" for name in Settings.model_fields if f"SBIR_{name.upper()}" not in text]
    assert missing == []


@pytest.mark.parametrize(("environment", "expected"), [
    ({"SBIR_DATA_ROOTS": "/srv/a,/srv/b"}, "data_roots: cannot be parsed (a JSON list, e.g. '[\"/srv/data\"]') "
                                           "(SBIR_DATA_ROOTS)"),
    ({"SBIR_CORS_ORIGINS": "[oops"}, "(SBIR_CORS_ORIGINS)"),
    ({"SBIR_PORT": "many"}, "port: Input should be a valid integer"),
    ({"SBIR_ADMIN_TOKEN_FILE": "/no/such/token"}, "SBIR_ADMIN_TOKEN_FILE): /no/such/token does not exist"),
    ({"SBIR_ADMIN_TOKEN": "x", "SBIR_ADMIN_TOKEN_FILE": "/etc/hostname"}, "are both set"),
])
def test_settings_errors_are_one_line_naming_the_setting(clean_environment, monkeypatch, capsys, environment,
                                                         expected):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert main(["serve"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sbir serve: error: ") and expected in error, error
    assert len(error.strip().splitlines()) == 1, error


def test_checkpoint_that_does_not_match_the_index_stops_the_server_naming_both_files(workspace, tmp_path):
    other = write_checkpoint(tmp_path / "other.pt", "zse-tiny", seed=1)
    process, base, log = serve(["--index", str(workspace.index_dir), "--checkpoint", str(other)], tmp_path,
                               SBIR_JOBS_DB=str(tmp_path / "jobs.sqlite3"))
    try:
        assert process.wait(120) == 2
    finally:
        stop(process)
    lines = log.read_text().strip().splitlines()
    assert lines[-1].startswith("sbir serve: error: the checkpoint "), lines[-1]
    assert str(other) in lines[-1] and str(workspace.index_dir) in lines[-1]
    assert f"built with {workspace.checkpoint}" in lines[-1]  # what the index manifest records
    assert "Traceback" not in log.read_text()


def test_flags_enable_admin_data_roots_and_index_root_and_start_up_says_so(workspace, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    data, gone, root = tmp_path / "data", tmp_path / "gone", tmp_path / "indexes"
    write_generic_dataset(data / "generic")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    process, base, log = serve(["--checkpoint", str(workspace.checkpoint), "--admin-token-file", str(token_file),
                                "--data-root", str(data), "--data-root", str(gone), "--index-root", str(root)], cwd)
    try:
        wait_healthy(process, base, log)
        with httpx.Client(base_url=base, timeout=60) as http:
            headers = {"Authorization": "Bearer file-token"}
            assert_error(http.post("/index/activate", json={"name": "none"}, headers=headers), 404, "unknown_index")
            assert_error(http.post("/index/activate", json={"name": "none"}, headers={"Authorization": "Bearer x"}),
                         403, "forbidden")
            error = assert_error(http.post("/index/build", json={"gallery": str(gone / "photos"), "name": "x"},
                                           headers=headers), 400, "data_root_missing")
            assert error["message"] == f"gallery: '{gone / 'photos'}' does not exist: the data root {gone} is missing"

            # The served checkpoint lies outside the data roots, and is accepted as a training init.
            config = {"run_dir": "runs/x", "model": {"name": "zse-tiny", "init_checkpoint": str(workspace.checkpoint)},
                      "data": {"dataset": "generic", "root": "generic", "num_workers": 0},
                      "schedule": {"epochs": 1, "epoch_size": 2}}
            created = http.post("/train", json={"config": config}, headers=headers)
            assert created.status_code == 202, created.text
            assert created.json()["params"]["config"]["model"]["init_checkpoint"] == str(workspace.checkpoint)
            assert http.delete(f"/jobs/{created.json()['id']}", headers=headers).status_code == 200
            elsewhere = write_checkpoint(tmp_path / "elsewhere.pt", "zse-tiny", seed=2)
            config["model"]["init_checkpoint"] = str(elsewhere)
            assert_error(http.post("/train", json={"config": config}, headers=headers), 403, "path_outside_data_roots")
            created = http.post("/evaluate", json={"dataset": "generic", "root": "generic",
                                                   "checkpoint": str(workspace.checkpoint)}, headers=headers)
            assert created.status_code == 202, created.text
            assert http.delete(f"/jobs/{created.json()['id']}", headers=headers).status_code == 200
    finally:
        stop(process)
    text = log.read_text()
    (line,) = [line for line in text.splitlines() if "admin endpoints" in line]
    assert line.endswith(f"admin endpoints on (token from {token_file}); data roots {data}, {gone} (missing); "
                         f"index root {root}; jobs in {root / 'jobs.sqlite3'}"), line
    assert "file-token" not in text
    assert sorted(path.name for path in cwd.iterdir()) == ["serve.log"]  # no sbir-jobs.sqlite3 here
    assert (root / "jobs.sqlite3").is_file()


def test_a_server_without_index_or_index_root_keeps_its_jobs_in_the_state_folder(workspace, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    process, base, log = serve(["--checkpoint", str(workspace.checkpoint)], cwd, XDG_STATE_HOME=str(tmp_path / "state"))
    try:
        wait_healthy(process, base, log)
        assert (tmp_path / "state" / "sbir" / "jobs.sqlite3").is_file()
        assert httpx.get(f"{base}/jobs", timeout=30).json() == {"jobs": []}
    finally:
        stop(process)
    assert sorted(path.name for path in cwd.iterdir()) == ["serve.log"]
    assert f"jobs in {tmp_path / 'state' / 'sbir' / 'jobs.sqlite3'}" in log.read_text()
