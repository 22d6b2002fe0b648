"""Embedding a gallery into resumable shards.

The gallery (N items, ids given) is cut into shards of `shard_size` consecutive items; each shard is
embedded in batches and written as one `.npz` file (tmp then rename) in the work directory. A
shard file that exists is complete, so a rerun embeds only the missing shards. Batches never cross a
shard boundary, so a resumed run batches every image exactly as an uninterrupted run would.

Pipeline: reader (`PhotoDataset`: decode + `preprocess`, in DataLoader workers) -> mapper
(`encode_batch`: model on the device, autocast on CUDA) -> writer (`write_shard`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from indexer.gallery import GalleryItem
from indexer.token_store import encode_tokens
from models.atomic import save_npz_atomic
from models.device import autocast
from models.preprocess import read_image

Preprocess = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class EmbedSettings:
    """How to embed: `token_format` fp16|int8|rq|none, `device` resolved, `autocast` None or a dtype;
    `token_bytes`: the rq codec's budget per token (shards of an rq build hold fp16: the codec is
    trained on them when the store is written)."""

    token_format: str
    batch_size: int
    device: torch.device
    num_workers: int
    shard_size: int
    autocast: torch.dtype | None
    token_bytes: int = 32

    def describe(self) -> dict[str, Any]:
        # Everything that can change the bytes of a shard; it names the work directory.
        return {
            "token_format": self.token_format,
            "batch_size": self.batch_size,
            "device_type": self.device.type,
            "shard_size": self.shard_size,
            "autocast": str(self.autocast).removeprefix("torch.") if self.autocast is not None else None,
            **({"token_bytes": self.token_bytes} if self.token_format == "rq" else {}),
        }


def default_workers() -> int:
    """DataLoader workers: one core left to the main process, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


class PhotoDataset(Dataset):
    """Item `position` -> (position, `[3, 224, 224]` tensor or None, reason or None).

    A file that cannot be decoded yields None and the reason instead of raising, so one broken
    photo does not stop the build.
    """

    def __init__(self, paths: Sequence[Path], preprocess: Preprocess):
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            image = read_image(self.paths[position])  # decoded now: a truncated file fails here
            return position, self.preprocess(image), None
        except Exception as error:  # PIL raises many types for broken files; all mean "skip it"
            return position, None, f"{type(error).__name__}: {error}"


@dataclass
class PhotoBatch:
    positions: list[int]
    images: torch.Tensor | None  # [b, 3, 224, 224] of the readable positions, None when none is
    failures: list[tuple[int, str]]

    def pin_memory(self) -> PhotoBatch:
        # Called by the DataLoader when pin_memory=True (CUDA), so the copy to the GPU can overlap.
        if self.images is not None:
            self.images = self.images.pin_memory()
        return self


def collate(samples: list[tuple[int, torch.Tensor | None, str | None]]) -> PhotoBatch:
    good = [(position, image) for position, image, _ in samples if image is not None]
    failures = [(position, reason or "unreadable") for position, image, reason in samples if image is None]
    images = torch.stack([image for _, image in good]) if good else None
    return PhotoBatch([position for position, _ in good], images, failures)


def shard_ranges(count: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) item ranges of the shards."""
    return [(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def shard_path(work_dir: Path, number: int) -> Path:
    return work_dir / f"shard-{number:05d}.npz"


def encode_batch(model: Any, images: torch.Tensor, settings: EmbedSettings) -> dict[str, np.ndarray]:
    """`[b, 3, 224, 224]` -> `vectors` float32 `[b, D]` (L2-normalised in float32), and when the
    model has tokens `tokens` float32 `[b, T, Dt]` and, with token selection, `kept` int `[b, n]`."""
    images = images.to(settings.device, non_blocking=True)
    with torch.inference_mode(), autocast(settings.device, settings.autocast):
        encoded = model.encode(images)
    # Re-normalise in float32: half-precision outputs are only normalised to ~1e-3.
    vectors = torch.nn.functional.normalize(encoded.ret.float(), dim=-1)
    out = {"vectors": vectors.cpu().numpy()}
    if encoded.tokens is not None:
        out["tokens"] = encoded.tokens.float().cpu().numpy()
    if getattr(encoded, "kept", None) is not None:
        out["kept"] = encoded.kept.cpu().numpy()
    return out


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write one finished shard atomically (a shard file that exists is complete)."""
    save_npz_atomic(path, **arrays)


def embed_shards(
    items: Sequence[GalleryItem],
    ids: np.ndarray,
    model: Any,
    preprocess: Preprocess,
    work_dir: Path,
    settings: EmbedSettings,
    progress: bool = True,
) -> list[Path]:
    """Embed every shard of `items` (ids int64 `[N]`) that `work_dir` lacks; returns all shard paths.

    Each shard holds: `ids` int64 `[m]`, `vectors` float32 `[m, D]`, the token arrays of
    `settings.token_format` (`tokens`, `scales`, `kept`; see token_store) and `skipped`, JSON lines
    of the items that could not be read (m counts the readable items only).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    ranges = shard_ranges(len(items), settings.shard_size)
    paths = [shard_path(work_dir, number) for number in range(len(ranges))]
    pending = [number for number, path in enumerate(paths) if not path.exists()]
    if not pending:
        return paths
    batches = [
        list(range(start, min(start + settings.batch_size, ranges[number][1])))
        for number in pending
        for start in range(ranges[number][0], ranges[number][1], settings.batch_size)
    ]
    loader = DataLoader(
        PhotoDataset([item.path for item in items], preprocess),
        batch_sampler=batches,
        num_workers=settings.num_workers,
        collate_fn=collate,
        pin_memory=settings.device.type == "cuda",
    )
    from tqdm.auto import tqdm

    total = sum(ranges[number][1] - ranges[number][0] for number in pending)
    bar = tqdm(total=total, unit="img", desc="embedding", disable=not progress, dynamic_ncols=True)
    pending_iter = iter(pending)
    current = next(pending_iter)
    collected: list[dict[str, np.ndarray]] = []
    skipped: list[dict[str, Any]] = []
    done_in_shard = 0
    try:
        for batch in loader:
            if batch.images is not None:
                encoded = encode_batch(model, batch.images, settings)
                # Convert to the stored format per batch: a shard of float32 ViT-B tokens would be 4x larger.
                tokens = encoded.pop("tokens", None)
                if tokens is not None and settings.token_format != "none":
                    shard_format = "fp16" if settings.token_format == "rq" else settings.token_format
                    encoded.update(encode_tokens(tokens, shard_format))
                else:
                    encoded.pop("kept", None)
                encoded["ids"] = ids[batch.positions]
                collected.append(encoded)
            for position, reason in batch.failures:
                item = items[position]
                skipped.append({"id": int(ids[position]), "key": item.key, "path": str(item.path), "reason": reason})
            done_in_shard += len(batch.positions) + len(batch.failures)
            bar.update(len(batch.positions) + len(batch.failures))
            start, stop = ranges[current]
            if done_in_shard == stop - start:
                write_shard(paths[current], _shard_arrays(collected, skipped))
                collected, skipped, done_in_shard = [], [], 0
                current = next(pending_iter, -1)
    finally:
        bar.close()
    return paths


def _shard_arrays(collected: list[dict[str, np.ndarray]], skipped: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {
        "skipped": np.asarray([json.dumps(entry, sort_keys=True) for entry in skipped], dtype=np.str_),
    }
    if not collected:
        arrays["ids"] = np.zeros(0, dtype=np.int64)
        arrays["vectors"] = np.zeros((0, 0), dtype=np.float32)
        return arrays
    for name in collected[0]:
        arrays[name] = np.concatenate([chunk[name] for chunk in collected])
    arrays["ids"] = arrays["ids"].astype(np.int64)
    if "kept" in arrays:
        arrays["kept"] = arrays["kept"].astype(np.int16)
    return arrays
