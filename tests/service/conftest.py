"""Shared fixtures: a real zse-tiny checkpoint and real indexes over a few generated photos.

Session-scoped because building them costs seconds; tests that change server state (index swaps,
jobs) make their own app over these files.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from service.main import create_app
from service.settings import Settings

ADMIN_TOKEN = "test-admin-token"
LABELS = ("circle", "square")


@dataclass(frozen=True)
class Workspace:
    """root: the data root; gallery (8 photos) and gallery_small (5 photos) under it."""

    root: Path
    gallery: Path
    gallery_small: Path
    checkpoint: Path
    index_dir: Path  # fp16 token store
    index_dir_no_tokens: Path  # tokens recomputed from the photos


def draw_photo(seed: int, label: str, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    background = tuple(int(v) for v in rng.integers(120, 255, 3))
    ink = tuple(int(v) for v in rng.integers(0, 110, 3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    x0, y0 = (int(v) for v in rng.integers(5, 30, 2))
    x1, y1 = (int(v) for v in rng.integers(60, 90, 2))
    if label == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=ink)
    else:
        draw.rectangle([x0, y0, x1, y1], fill=ink)
    return image


def sketch_image(kind: str = "circle", size: int = 200) -> Image.Image:
    """A black-on-white line drawing (circle or square), RGB."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = [size // 5, size // 5, 4 * size // 5, 4 * size // 5]
    if kind == "circle":
        draw.ellipse(box, outline="black", width=4)
    else:
        draw.rectangle(box, outline="black", width=4)
    return image


def sketch_png(kind: str = "circle", size: int = 200) -> bytes:
    """`sketch_image` as PNG bytes."""
    buffer = io.BytesIO()
    sketch_image(kind, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_gallery(folder: Path, count: int, seed: int) -> None:
    for number in range(count):
        label = LABELS[number % 2]
        (folder / label).mkdir(parents=True, exist_ok=True)
        draw_photo(seed + number, label).save(folder / label / f"{number:02d}.png")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    import torch

    import indexer
    import models

    root = tmp_path_factory.mktemp("data")
    _write_gallery(root / "gallery", 8, seed=0)
    _write_gallery(root / "gallery-small", 5, seed=100)
    torch.manual_seed(0)
    checkpoint = root / "zse-tiny.pt"
    models.save_checkpoint(models.build_model("zse-tiny"), checkpoint)
    index_dir = indexer.build(root / "gallery", checkpoint, root / "indexes" / "main", tokens="fp16",
                              device="cpu", num_workers=0, progress=False)
    no_tokens = indexer.build(root / "gallery", checkpoint, root / "indexes" / "main-no-tokens", tokens="none",
                              device="cpu", num_workers=0, progress=False)
    return Workspace(root, root / "gallery", root / "gallery-small", checkpoint, index_dir, no_tokens)


@pytest.fixture
def make_settings(workspace: Workspace, tmp_path: Path) -> Callable[..., Settings]:
    """Settings over the workspace, with a fresh jobs DB and index root per test."""

    def make(**overrides) -> Settings:
        values = dict(
            index_dir=workspace.index_dir, checkpoint=workspace.checkpoint, index_root=tmp_path / "indexes",
            data_roots=[workspace.root], jobs_db=tmp_path / "jobs.sqlite3", admin_token=ADMIN_TOKEN, device="cpu",
        )
        values.update(overrides)
        return Settings(**values)

    return make


@contextmanager
def running(app: FastAPI, timeout: float = 120.0) -> Iterator[TestClient]:
    """A TestClient over `app` with its lifespan run and the model and index loaded."""
    with TestClient(app) as client:
        assert app.state.engine.wait_loaded(timeout), "the engine did not finish loading"
        yield client


def auth(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="session")
def served(workspace: Workspace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, TestClient]]:
    """One ready app over the fp16 index, shared by tests that only read."""
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


def search(client: TestClient, png: bytes | None = None, **params) -> object:
    """POST /search with a sketch upload; returns the response."""
    return client.post("/search", params=params, files={"sketch": ("sketch.png", sketch_png() if png is None else png, "image/png")})


def finished(job: dict) -> bool:
    return job["state"] not in ("queued", "running")


def wait_for(client, job_id: str, predicate: Callable[[dict], bool] = finished, timeout: float = 60.0,
             interval: float = 0.05) -> dict:
    """Poll GET /jobs/{job_id} (a TestClient or an httpx.Client) until `predicate(job)`; the job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(interval)
    raise AssertionError(f"job {job_id} never reached the expected state: {job}")


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The response has `status` and the API's JSON error shape (and `code` when given)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]
