"""The real thing: `python -m service.cli serve` in its own process, uvicorn on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.api import ADMIN_TOKEN

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the OS's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`sbir serve --index INDEX --checkpoint CHECKPOINT` over a state folder that outlives it: its
    working directory, jobs DB and log (``state/server.log``, appended to by each start). Data roots are
    ``[data_root]``; ``index_root`` sets SBIR_INDEX_ROOT when given. It may be started again after
    `kill` or `stop`, on a new port."""

    def __init__(self, state: Path, index: Path, checkpoint: Path, data_root: Path,
                 index_root: Path | None = None) -> None:
        self.state, self.index, self.checkpoint = state, index, checkpoint
        self.data_root, self.index_root = data_root, index_root
        self.process: subprocess.Popen | None = None
        self.base = ""

    @property
    def log_path(self) -> Path:
        return self.state / "server.log"

    def start(self, timeout: float = 120.0) -> httpx.Client:
        """Start it and wait until GET /readyz answers 200; an httpx client on its base URL."""
        port = free_port()
        environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "SBIR_JOBS_DB": str(self.state / "jobs.sqlite3"),
                       "SBIR_DATA_ROOTS": f'["{self.data_root}"]', "SBIR_ADMIN_TOKEN": ADMIN_TOKEN,
                       "SBIR_DEVICE": "cpu"}
        if self.index_root is not None:
            environment["SBIR_INDEX_ROOT"] = str(self.index_root)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--index", str(self.index),
                 "--checkpoint", str(self.checkpoint), "--port", str(port)],
                cwd=self.state, env=environment, stdout=log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.log()
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return httpx.Client(base_url=self.base, timeout=60)
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.log()
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """SIGINT (a clean shutdown through the lifespan), then SIGKILL after 20 s; nothing if not running."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
