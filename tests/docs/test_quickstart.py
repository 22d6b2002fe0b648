"""The README's quick start for one's own photos, run as it stands: its commands, taken from the
README's text, in a fresh directory holding only a photo folder, a sketch and the demo weights,
against a real server on a free port (the only edits: the photo folder's path and the port)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.datasets import make_folder_gallery
from tests.support.images import sketch_png
from tests.support.server import PROJECT_ROOT, free_port


def _quick_start_commands() -> list[str]:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Quick start: your own photos"):]
    block = section[section.index("```sh") + 5: section.index("```", section.index("```sh") + 5)]
    return [line for line in block.splitlines() if line and not line.startswith(("#", ". "))]


def test_the_readme_quick_start_runs_from_a_fresh_directory(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        raise AssertionError("the quick start uses curl; install it (Debian package curl)")
    work = tmp_path / "fresh"
    make_folder_gallery(work / "photos", {"cats": 3, "cups": 3})
    (work / "my-sketch.png").write_bytes(sketch_png("circle"))
    (work / "weights").mkdir()
    shutil.copy(PROJECT_ROOT / "weights" / "zse-openmoji-demo.pt", work / "weights")
    port = str(free_port())
    commands = [line.replace("~/photos", "photos").replace("8000", port) for line in _quick_start_commands()]
    build, serve, search, explain = commands
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                   "SBIR_DEVICE": "cpu", "XDG_STATE_HOME": str(tmp_path / "state")}
    started = time.monotonic()
    subprocess.run(build, shell=True, cwd=work, env=environment, check=True, capture_output=True)
    assert serve.endswith("&")
    with open(tmp_path / "server.log", "wb") as log:
        # Its own process group, so that stopping it stops the server whether or not the shell stays.
        server = subprocess.Popen(serve.removesuffix("&"), shell=True, cwd=work, stdout=log,
                                  stderr=subprocess.STDOUT, env=environment, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
        found = json.loads(subprocess.run(search, shell=True, cwd=work, env=environment, check=True,
                                          capture_output=True, text=True).stdout)
        assert len(found["results"]) == 5 and found["reranked"] is True
        first = found["results"][0]
        assert first["label"] in {"cats", "cups"} and first["key"].startswith(first["label"] + "/")
        explain = explain.replace("QUERY_ID", found["query_id"]).replace("IMAGE_ID", str(first["image_id"]))
        subprocess.run(explain, shell=True, cwd=work, env=environment, check=True)
        assert (work / "why.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    assert time.monotonic() - started < 300  # the "under 5 minutes" on 2 cores, tokens included


def test_the_quick_start_block_is_the_four_commands_the_test_runs() -> None:
    commands = _quick_start_commands()
    assert [re.split(r"\s+", line)[0:2] for line in commands][0] == ["sbir", "index"]
    assert len(commands) == 4 and commands[2].startswith("curl") and commands[3].startswith("curl")
