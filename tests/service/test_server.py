"""The real thing: `sbir serve` in its own process with uvicorn on a loopback port, over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import ADMIN_TOKEN, sketch_png

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(workspace, tmp_path):
    port = free_port()
    environment = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "SBIR_JOBS_DB": str(tmp_path / "jobs.sqlite3"),
        "SBIR_DATA_ROOTS": f'["{workspace.root}"]',
        "SBIR_ADMIN_TOKEN": ADMIN_TOKEN,
        "SBIR_DEVICE": "cpu",
    }
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--index", str(workspace.index_dir),
         "--checkpoint", str(workspace.checkpoint), "--port", str(port)],
        cwd=tmp_path, env=environment, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        yield base, process, tmp_path / "server.log"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def test_sbir_serve_answers_over_http(server):
    base, process, log_path = server
    with httpx.Client(base_url=base, timeout=60) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        response = http.post("/search", params={"k": 4},
                             files={"sketch": ("s.png", sketch_png("circle"), "image/png")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["results"]) == 4 and body["reranked"] is True
        assert http.get(body["results"][0]["image_url"]).status_code == 200
        explain = http.get(f"/explain/{body['query_id']}/{body['results'][0]['image_id']}")
        assert explain.status_code == 200 and len(explain.json()["kernel"]) == 49

        bad = http.post("/search", files={"sketch": ("s.png", b"nope", "image/png")})
        assert bad.status_code == 415 and bad.json()["error"]["code"] == "unsupported_media_type"
        assert http.post("/train", json={"config": {}}).status_code == 401
        assert "sbir_http_requests_total" in http.get("/metrics").text

    process.send_signal(signal.SIGINT)
    assert process.wait(20) == 0  # a clean shutdown through the lifespan
    assert ADMIN_TOKEN not in log_path.read_text()


def test_serve_reports_bad_arguments_in_one_line(capsys, tmp_path, monkeypatch):
    from service.cli import main

    monkeypatch.delenv("SBIR_INDEX_DIR", raising=False)
    assert main(["serve", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt (from --checkpoint or SBIR_CHECKPOINT) does not exist" in capsys.readouterr().err
    monkeypatch.setenv("SBIR_PORT", "not-a-port")
    assert main(["serve"]) == 2
    assert "port:" in capsys.readouterr().err
    assert main(["serve", "--settings", str(tmp_path / "none.json")]) == 2
    assert "settings file not found" in capsys.readouterr().err
