"""The real thing: `sbir serve` in its own process with uvicorn on a loopback port, over HTTP (the
`server` fixture, tests/conftest.py)."""

from __future__ import annotations

import signal

import httpx

from tests.support.api import ADMIN_TOKEN
from tests.support.images import sketch_png


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
