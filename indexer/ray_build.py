"""`sbir index build --ray auto|local|ADDRESS`: the gallery's shards embedded by Ray workers.

The single-process build embeds the shards of `indexer.embedding` one after the other; here every
missing shard is one Ray task, run on a worker with one GPU where the cluster has GPUs, else on one
CPU. Everything else stays as it is: the shard ranges, names and bytes are those of
`embedding.embed_shards` (each task runs it on its own shard), the work directory is the build's
resumable one, and the driver then assembles and publishes the index in one process
(`indexer.pipeline`).

    embedder = connect("auto", "auto", settings, loaded)  # one Ray driver session
    shards = embedder(items, ids, loaded.model, preprocess, work_dir, embedder.settings)

Assumptions and behaviour, also in docs/indexing.md ("Builds on Ray"):
- The gallery, the checkpoint and the work directory (next to `--out`) are at the same paths on
  every node: shared storage. A worker checks the checkpoint's sha256 and that it sees the work
  directory, and says so when it does not.
- Workers load the checkpoint themselves from its path (the model is never shipped) and keep it
  loaded for the next shard they get.
- A shard is written by `embedding.write_shard` (the project's atomic writer) in a scratch folder
  inside the work directory, then renamed into place, so a shard file that exists is complete.
- A task whose worker process dies (killed, out of memory, node lost) is retried by Ray up to
  `SHARD_RETRIES` times; a shard that still fails leaves the other shards to finish, then the build
  fails naming it, and the same command resumes: shards already written are not redone.

Ray is imported inside functions only, so that importing `indexer` does not import it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from indexer.embedding import EmbedSettings, Preprocess, embed_shards, shard_path, shard_ranges
from indexer.errors import IndexerError
from indexer.gallery import GalleryItem
from models.device import inference_dtype
from models.errors import SbirError
from models.interface import LoadedModel

# Retries of a shard whose worker process died (Ray's system failures). Exceptions raised by the
# embedding code itself are not retried: they are the same on every try (a checkpoint that differs
# from the driver's, a work directory the node cannot see).
SHARD_RETRIES = 2
INSTALL_HINT = "pip install 'sbir-service[ray]'"
# The checkpoints this worker process has loaded, by (path, sha256, device): Ray reuses a worker
# process for the next task, and loading a ViT-B/16 and hashing its file costs seconds.
_LOADED: dict[tuple[str, str, str], Any] = {}


def connect(address: str, device: str, settings: EmbedSettings, loaded: LoadedModel) -> RayEmbedder:
    """Join (`auto`, `HOST:PORT`) or start (`local`) a Ray cluster; returns the embedder for it.

    `device` (auto | cpu | cuda) is the workers' device: auto means one GPU per task where the
    cluster has GPUs, else one CPU. `loaded`: the driver's model, for the checkpoint's path and
    sha256 (workers load that file themselves). An existing `ray.init()` of the caller's is used
    as it is, and left open.
    """
    ray = _import_ray()
    owned = not ray.is_initialized()
    if owned:
        _init(ray, address)
    try:
        worker_device = _worker_device(device, float(ray.cluster_resources().get("GPU", 0)))
    except BaseException:
        if owned:
            ray.shutdown()
        raise
    # The device type and autocast name the work directory: shards embedded on GPUs in float16
    # are not mixed with CPU ones in float32.
    worker_settings = dataclasses.replace(settings, device=worker_device, autocast=inference_dtype(worker_device))
    return RayEmbedder(worker_settings, str(loaded.path), loaded.sha256, owned)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise IndexerError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _init(ray: Any, address: str) -> None:
    """`ray.init` with the project's choices; a cluster that cannot be reached is one line naming it."""
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address == "local":
        # A cluster of this machine, for this build only. Its dashboard (and the jobs API it serves)
        # is never started: nothing here needs it, and it would accept code from anyone who reaches it.
        options["include_dashboard"] = False
    reason = _unreachable(address)
    if reason is None:
        try:
            ray.init(address=address, **options)
            return
        except (ConnectionError, RuntimeError, ValueError) as error:
            hint = ("" if address in ("auto", "local") else
                    "; a cluster with token authentication also needs RAY_AUTH_MODE=token here")
            reason = _first_line(error) + hint
    raise IndexerError(f"--ray {address}: cannot connect to a Ray cluster: {reason}")


def _unreachable(address: str, timeout_s: float = 5.0) -> str | None:
    """Why nothing accepts a TCP connection at a ``[ray://]HOST:PORT`` address, or None (reachable, or
    not of that form: ``auto``, ``local``). Ray itself retries an address nobody listens on for about
    40 s before it gives up; a refused or unresolvable address is known at once."""
    host, separator, port = address.removeprefix("ray://").rpartition(":")
    if not separator or not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return None
    except OSError as error:
        return error.strerror or type(error).__name__


def _worker_device(choice: str, gpus: float) -> torch.device:
    if choice not in ("auto", "cpu", "cuda"):
        raise IndexerError(f"--device {choice!r} with --ray: use auto, cpu or cuda (each Ray task gets one GPU)")
    if choice == "cuda" and gpus < 1:
        raise IndexerError("--device cuda with --ray: the Ray cluster has no GPU")
    return torch.device("cuda" if choice != "cpu" and gpus >= 1 else "cpu")


class RayEmbedder:
    """`embedding.embed_shards`'s signature, run as one Ray task per missing shard.

    `model` is the driver's and is not used: every worker loads the checkpoint from its path.
    """

    def __init__(self, settings: EmbedSettings, checkpoint: str, sha256: str, owned: bool):
        self.settings = settings  # the workers': their device and autocast
        self.checkpoint = checkpoint
        self.sha256 = sha256
        self._owned = owned  # this embedder started the Ray session, so it ends it

    def __call__(self, items: Sequence[GalleryItem], ids: np.ndarray, model: Any, preprocess: Preprocess,
                 work_dir: Path, settings: EmbedSettings, progress: bool = True) -> list[Path]:
        ray = _import_ray()
        try:
            return _embed_on_ray(ray, items, ids, preprocess, work_dir, settings, progress, self.checkpoint,
                                 self.sha256)
        finally:
            if self._owned:
                ray.shutdown()


def _embed_on_ray(ray: Any, items: Sequence[GalleryItem], ids: np.ndarray, preprocess: Preprocess, work_dir: Path,
                  settings: EmbedSettings, progress: bool, checkpoint: str, sha256: str) -> list[Path]:
    work_dir.mkdir(parents=True, exist_ok=True)
    ranges = shard_ranges(len(items), settings.shard_size)
    paths = [shard_path(work_dir, number) for number in range(len(ranges))]
    pending = [number for number, path in enumerate(paths) if not path.exists()]  # resumption
    if not pending:
        return paths
    task = _remote_task(ray, settings)
    running = {}
    for number in pending:
        start, stop = ranges[number]
        # Named per shard: `ray::embed-shard-00012` in process lists, logs and the timeline.
        ref = task.options(name=f"embed-shard-{number:05d}").remote(
            checkpoint, sha256, list(items[start:stop]), ids[start:stop], number, str(work_dir), settings,
            preprocess)
        running[ref] = number
    failed = _wait_all(ray, running, ranges, progress)
    if failed:
        raise _shards_failed(failed, len(ranges), work_dir)
    return paths


def _remote_task(ray: Any, settings: EmbedSettings) -> Any:
    """The task function with its resources: one GPU, or one CPU (Ray runs as many tasks at once on
    a node as it has of them, so a task's DataLoader reads in-process on CPU nodes)."""
    resources: dict[str, Any] = {"num_gpus": 1} if settings.device.type == "cuda" else {"num_cpus": 1}
    return ray.remote(max_retries=SHARD_RETRIES, retry_exceptions=False, **resources)(embed_shard_task)


def _wait_all(ray: Any, running: dict[Any, int], ranges: list[tuple[int, int]], progress: bool) -> dict[int, str]:
    """Wait for every task; returns the shards that failed after their retries, with the reason.

    A user error (an SbirError raised in a worker) is the same for every shard: the rest are
    cancelled and it is raised at once, as one line.
    """
    from tqdm.auto import tqdm

    failed: dict[int, str] = {}
    total = sum(ranges[number][1] - ranges[number][0] for number in running.values())
    with tqdm(total=total, unit="img", desc="embedding on Ray", disable=not progress, dynamic_ncols=True) as bar:
        while running:
            [ref], _ = ray.wait(list(running), num_returns=1)
            number = running.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayTaskError as error:
                if isinstance(error.cause, SbirError):
                    for other in running:
                        ray.cancel(other, force=True)
                    raise type(error.cause)(str(error.cause).splitlines()[0]) from None
                failed[number] = _first_line(error.cause)
            except ray.exceptions.RayError as error:  # the worker or its node died, after the retries
                failed[number] = _first_line(error)
            bar.update(ranges[number][1] - ranges[number][0])
    return failed


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip() if error is not None else ""
    return text.splitlines()[0] if text else type(error).__name__


def _shards_failed(failed: dict[int, str], count: int, work_dir: Path) -> IndexerError:
    first = min(failed)
    names = ", ".join(str(number) for number in sorted(failed)[:5]) + (", ..." if len(failed) > 5 else "")
    return IndexerError(
        f"{len(failed)} of {count} shards failed on Ray after {SHARD_RETRIES} retries (shard {names}; "
        f"shard {first}: {failed[first]}); the {count - len(failed)} finished shards are kept in {work_dir}: "
        "rerun the same command to embed only the missing ones")


def embed_shard_task(checkpoint: str, sha256: str, items: list[GalleryItem], ids: np.ndarray, number: int,
                     work_dir: str, settings: EmbedSettings, preprocess: Preprocess) -> int:
    """On a Ray worker: embed shard `number` (`items`, `ids`: its slice of the gallery) into
    `work_dir`; returns `number`. Runs `embed_shards` on this one shard, so its bytes are those of a
    single-process build."""
    final = shard_path(Path(work_dir), number)
    _check_shared(Path(work_dir), Path(checkpoint))
    if final.exists():  # a retry of a task whose first attempt had already renamed its shard
        return number
    model = _load(checkpoint, sha256, settings.device)
    # embed_shards writes `shard-00000.npz` of the items it is given: a scratch folder per attempt
    # (named by pid) keeps two attempts at the same shard apart, and one rename puts it in place.
    scratch = Path(work_dir) / f".ray-shard-{number:05d}-{os.getpid()}"
    one_shard = dataclasses.replace(settings, shard_size=len(items),
                                    num_workers=settings.num_workers if settings.device.type == "cuda" else 0)
    try:
        [written] = embed_shards(items, ids, model, preprocess, scratch, one_shard, progress=False)
        os.replace(written, final)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return number


def _check_shared(work_dir: Path, checkpoint: Path) -> None:
    """The one-line errors of a node that does not share the driver's storage."""
    node = _node_name()
    if not work_dir.is_dir():
        raise IndexerError(f"Ray node {node} does not see the work directory {work_dir}: --ray needs the "
                           "gallery, the checkpoint and --out's folder on storage shared by every node")
    if not checkpoint.is_file():
        raise IndexerError(f"Ray node {node} does not see the checkpoint {checkpoint}: --ray needs it on "
                           "storage shared by every node")


def _load(checkpoint: str, sha256: str, device: torch.device) -> Any:
    key = (checkpoint, sha256, str(device))
    if key not in _LOADED:
        import models

        loaded = models.load(checkpoint, device)
        if loaded.sha256 != sha256:
            raise IndexerError(f"the checkpoint {checkpoint} on Ray node {_node_name()} has sha256 "
                               f"{loaded.sha256}, the driver's {sha256}: every node must see the same file")
        _LOADED.clear()  # one model per worker process: the last build's is of no further use
        _LOADED[key] = loaded.model
    return _LOADED[key]


def _node_name() -> str:
    return os.uname().nodename
