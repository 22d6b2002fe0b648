"""`sbir index build --ray` on a real Ray cluster of this machine (`ray start --head`, two CPUs,
reached by its address): the index equals a single-process build, a
worker killed mid-shard costs only that shard, a rerun resumes, and user errors are one line.

The module's tests share one cluster and, in this process, one Ray driver session, so that the
workers (and the model each has loaded) stay warm from test to test; the CLI test is a process of
its own and connects by address like a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import indexer
from indexer.embedding import EmbedSettings, embed_shards, shard_path
from indexer.errors import IndexerError
from indexer.pipeline import DEFAULT_SHARD_SIZE
from service.cli import main
from tests.support.datasets import make_folder_gallery

ray = pytest.importorskip("ray", reason="the Ray extra is not installed (pip install -e '.[ray]')")

REPO = Path(__file__).resolve().parents[2]
# 18 photos and one unreadable file: 19 items, so shard_size 4 gives 5 shards (the last of 3).
SHARD_SIZE = 4
SHARDS = 5
KILLED = 3  # the shard whose worker is killed: late enough that earlier shards are already written
OPTIONS = {"num_workers": 0, "progress": False, "batch_size": 2, "shard_size": SHARD_SIZE}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (the cluster's own temp dir: processes it started)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if text.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    found.append(int(name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """`ray start --head --block` on 127.0.0.1 with two CPUs and no dashboard; yields its address.

    Without token authentication: Ray reads RAY_AUTH_MODE once, when this process first imports it,
    so a token could not be switched on here for this module only; the cluster listens for this
    machine alone and lives for this module.
    """
    temp_dir = tempfile.mkdtemp(prefix="sbir-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port = _free_port()
    auth = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
         f"--dashboard-port={_free_port()}", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env={**os.environ, **auth}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in auth.items():
                patch.setenv(name, value)
            assert head.stdout is not None
            lines = []
            for line in head.stdout:
                lines.append(line)
                if "Ray runtime started" in line:
                    break
            else:
                pytest.fail("ray start --head failed:\n" + "".join(lines[-20:]))
            yield f"127.0.0.1:{port}"
            if ray.is_initialized():
                ray.shutdown()
    finally:
        head.send_signal(signal.SIGTERM)  # --block stops every process of the node on SIGTERM
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        for pid in _processes_mentioning(temp_dir):  # anything of ours that outlived the head
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def driver(ray_cluster: str) -> str:
    """This process connected to the cluster (once for the module); builds reuse the session."""
    if not ray.is_initialized():
        ray.init(address=ray_cluster, logging_level="WARNING", log_to_driver=False)
    return ray_cluster


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray-gallery") / "gallery"
    make_folder_gallery(root, {"a": 9, "b": 9})
    (root / "a" / "broken.png").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def single(gallery: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process build that every Ray build must equal."""
    return indexer.build(gallery, checkpoint, tmp_path_factory.mktemp("single") / "index", **OPTIONS)


@pytest.fixture(scope="module")
def reference_shards(gallery: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process shards of the gallery (embedding.embed_shards), for the shard-level tests."""
    import models
    from models import preprocess

    items = indexer.read_gallery(gallery).items
    work_dir = tmp_path_factory.mktemp("reference") / "work"
    embed_shards(items, np.arange(len(items)), models.load(checkpoint, "cpu").model, preprocess.photo, work_dir,
                 _settings(), progress=False)
    return work_dir


def _settings() -> EmbedSettings:
    import torch

    return EmbedSettings("fp16", OPTIONS["batch_size"], torch.device("cpu"), 0, SHARD_SIZE, None)


def _embedder(address: str, checkpoint: Path) -> Any:
    import models
    from indexer import ray_build

    return ray_build.connect(address, "cpu", _settings(), models.load(checkpoint, "cpu"))


def _run_embedder(embedder: Any, gallery: Path, work_dir: Path) -> list[Path]:
    from models import preprocess

    items = indexer.read_gallery(gallery).items
    return embedder(items, np.arange(len(items)), None, preprocess.photo, work_dir, embedder.settings, False)


def _stat(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns, info.st_size


def _assert_same_shard(path: Path, reference: Path) -> None:
    with np.load(path) as ours, np.load(reference) as theirs:
        assert sorted(ours.files) == sorted(theirs.files)
        np.testing.assert_array_equal(ours["ids"], theirs["ids"])
        np.testing.assert_array_equal(ours["skipped"], theirs["skipped"])
        np.testing.assert_allclose(ours["vectors"], theirs["vectors"], atol=1e-5)
        np.testing.assert_allclose(ours["tokens"].astype(np.float32), theirs["tokens"].astype(np.float32), atol=2e-3)


def _vectors(directory: Path) -> np.ndarray:
    """The stored vectors in id order (a Flat index: an IndexIDMap over an IndexFlat)."""
    import faiss

    stored = faiss.read_index(str(directory / "index.faiss"))  # kept: the downcasts below do not own it
    mapped = faiss.downcast_index(stored)
    flat = faiss.downcast_index(mapped.index)
    vectors = flat.reconstruct_n(0, flat.ntotal)
    return vectors[np.argsort(faiss.vector_to_array(mapped.id_map))]


def _assert_same_index(ours: Path, single: Path, shard_size: int = SHARD_SIZE) -> None:
    """Same ids, records and skipped photos, vectors and tokens within fp tolerance, same top-k;
    `ours` was embedded in shards of `shard_size` photos (recorded in its manifest)."""
    np.testing.assert_array_equal(np.load(ours / "ids.npy"), np.load(single / "ids.npy"))
    assert (ours / "records.jsonl").read_text() == (single / "records.jsonl").read_text()
    assert (ours / "skipped.jsonl").read_text() == (single / "skipped.jsonl").read_text()
    vectors = _vectors(single)
    np.testing.assert_allclose(_vectors(ours), vectors, atol=1e-5)
    rng = np.random.default_rng(0)
    queries = np.concatenate([vectors[[0, 5, 11]], rng.normal(size=(3, vectors.shape[1])).astype(np.float32)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    with indexer.open(ours) as a, indexer.open(single) as b:
        assert (len(a), a.manifest["embedding"]) == (len(b), {**b.manifest["embedding"], "shard_size": shard_size})
        ids = np.load(single / "ids.npy")
        np.testing.assert_allclose(a.tokens(ids).numpy(), b.tokens(ids).numpy(), atol=2e-3)
        np.testing.assert_array_equal(a.search(queries, 5)[0], b.search(queries, 5)[0])


class ShardKiller(threading.Thread):
    """SIGKILLs the first process titled `ray::embed-shard-NNNNN` (Ray names a worker's process after
    the task it runs), then records which shard files existed at that moment."""

    def __init__(self, number: int, work_dir: Path):
        super().__init__(daemon=True)
        self.title = f"ray::embed-shard-{number:05d}".encode()
        self.work_dir = work_dir
        self.done = threading.Event()
        self.killed: int | None = None
        self.before: dict[str, tuple[int, int, int]] = {}

    def run(self) -> None:
        while not self.done.is_set():
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                try:
                    if not Path(f"/proc/{name}/cmdline").read_bytes().startswith(self.title):
                        continue
                    os.kill(int(name), signal.SIGKILL)
                except OSError:
                    continue
                self.killed = int(name)
                self.before = {path.name: _stat(path) for path in self.work_dir.glob("shard-*.npz")}
                return
            time.sleep(0.002)


def test_unreachable_address_is_one_line_naming_it(ray_cluster: str, tmp_path: Path, checkpoint: Path,
                                                   gallery: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if ray.is_initialized():
        ray.shutdown()  # a session of an earlier test would be reused instead of connecting
    address = f"127.0.0.1:{_free_port()}"
    status = main(["index", "build", "--gallery", str(gallery), "--checkpoint", str(checkpoint),
                   "--out", str(tmp_path / "index"), "--ray", address, "--no-progress"])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1, error
    assert f"--ray {address}: cannot connect to a Ray cluster: Connection refused" in error
    assert not (tmp_path / "index").exists()


def test_the_address_probe_tells_refused_and_unresolvable_from_listening() -> None:
    from indexer.ray_build import _unreachable

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert _unreachable(f"127.0.0.1:{port}") is None
        assert _unreachable(f"ray://127.0.0.1:{port}") is None
    assert _unreachable(f"127.0.0.1:{port}") == "Connection refused"  # closed now
    assert _unreachable("no-such-host.invalid:6379") is not None
    assert _unreachable("auto") is None and _unreachable("local") is None


def test_ray_build_equals_the_single_process_build(driver: str, gallery: Path, checkpoint: Path, single: Path,
                                                   tmp_path: Path) -> None:
    out = indexer.build(gallery, checkpoint, tmp_path / "index", ray=driver, **OPTIONS)
    _assert_same_index(out, single)
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["count"], manifest["skipped"]) == (18, 1)
    # Published and cleaned up as a single-process build is: no work or staging folder left.
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.endswith(".lock")) == ["index"]


def test_a_killed_worker_costs_only_its_shard(driver: str, gallery: Path, checkpoint: Path,
                                              reference_shards: Path, tmp_path: Path) -> None:
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    killer = ShardKiller(KILLED, work_dir)
    killer.start()
    try:
        paths = _run_embedder(_embedder(driver, checkpoint), gallery, work_dir)  # Ray retries the shard
    finally:
        killer.done.set()
        killer.join()
    assert killer.killed is not None, f"no process ran shard {KILLED}"
    killed = shard_path(work_dir, KILLED).name
    # Shards finished before the kill are not redone (same inode and mtime); the killed one is written.
    assert killer.before and killed not in killer.before, killer.before
    assert {name: _stat(work_dir / name) for name in killer.before} == killer.before
    assert paths == [shard_path(work_dir, number) for number in range(SHARDS)]
    for number in range(SHARDS):
        _assert_same_shard(shard_path(work_dir, number), shard_path(reference_shards, number))


def test_a_rerun_embeds_only_the_missing_shards(driver: str, gallery: Path, checkpoint: Path,
                                                reference_shards: Path, tmp_path: Path) -> None:
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    kept = {}
    for number in (0, 2, 4):  # as left by an interrupted build
        path = shutil.copy2(shard_path(reference_shards, number), shard_path(work_dir, number))
        kept[number] = _stat(Path(path))
    _run_embedder(_embedder(driver, checkpoint), gallery, work_dir)
    assert {number: _stat(shard_path(work_dir, number)) for number in kept} == kept
    for number in range(SHARDS):
        _assert_same_shard(shard_path(work_dir, number), shard_path(reference_shards, number))


def test_a_workers_user_error_is_one_line(driver: str, gallery: Path, checkpoint: Path, tmp_path: Path) -> None:
    from indexer import ray_build

    embedder = ray_build.RayEmbedder(_settings(), str(checkpoint), "0" * 64, owned=False)
    with pytest.raises(IndexerError, match="has sha256 .*, the driver's 0000") as raised:
        _run_embedder(embedder, gallery, tmp_path / "work")
    assert "\n" not in str(raised.value)


def test_cli_build_by_address(ray_cluster: str, gallery: Path, checkpoint: Path, single: Path,
                              tmp_path: Path) -> None:
    out = tmp_path / "index"
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "index", "build", "--gallery", str(gallery), "--checkpoint",
         str(checkpoint), "--out", str(out), "--ray", ray_cluster, "--workers", "0", "--batch-size", "2",
         "--no-progress"],
        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "18 photos, 1 skipped" in result.stdout
    # The CLI's default shard size: one shard here, with the same vectors as 5 shards of 4.
    _assert_same_index(out, single, shard_size=DEFAULT_SHARD_SIZE)
