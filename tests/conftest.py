"""Fixtures shared across the test tree (helpers and generators live in tests/support).

The session-scoped ones cost seconds to build and are shared by every directory that uses them;
tests that change server state (index swaps, jobs) make their own app over these files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.support.api import ADMIN_TOKEN, running
from tests.support.checkpoints import write_checkpoint
from tests.support.datasets import Workspace, make_workspace
from tests.support.server import Server

if TYPE_CHECKING:
    import subprocess

    from service.settings import Settings


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised zse-tiny (seed 0) saved with `models.save_checkpoint` (the real format)."""
    return write_checkpoint(tmp_path_factory.mktemp("checkpoint") / "zse-tiny.pt", "zse-tiny", seed=0)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """A data root with two galleries, a real zse-tiny checkpoint and real indexes over the gallery."""
    return make_workspace(tmp_path_factory.mktemp("data"))


@pytest.fixture
def make_settings(workspace: Workspace, tmp_path: Path) -> Callable[..., Settings]:
    """Settings over the workspace, with a fresh jobs DB and index root per test."""
    from service.settings import Settings

    def make(**overrides) -> Settings:
        values = dict(
            index_dir=workspace.index_dir, checkpoint=workspace.checkpoint, index_root=tmp_path / "indexes",
            data_roots=[workspace.root], jobs_db=tmp_path / "jobs.sqlite3", admin_token=ADMIN_TOKEN, device="cpu",
        )
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def served(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, TestClient]]:
    """One ready app over the fp16 index, shared by tests that only read."""
    from service.main import create_app
    from service.settings import Settings

    state = tmp_path_factory.mktemp("served")
    settings = Settings(index_dir=workspace.index_dir, checkpoint=workspace.checkpoint, index_root=state / "indexes",
                        data_roots=[workspace.root], jobs_db=state / "jobs.sqlite3", admin_token=ADMIN_TOKEN,
                        device="cpu")
    app = create_app(settings)
    with running(app) as client:
        yield app, client


@pytest.fixture
def client(served: tuple[FastAPI, TestClient]) -> TestClient:
    return served[1]


@pytest.fixture
def server(workspace: Workspace, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """`sbir serve` over the workspace's fp16 index in its own process: (base URL, process, log path)."""
    started = Server(tmp_path, workspace.index_dir, workspace.checkpoint, workspace.root)
    try:
        started.start(timeout=90).close()
        yield started.base, started.process, started.log_path
    finally:
        started.stop()
