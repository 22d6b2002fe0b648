"""`build` and `add`: gallery -> shards (resumable) -> staging directory -> atomic publish.

Order of work, so that every user error is reported before any photo is embedded:
options, gallery listing, target directory, checkpoint, FAISS factory; then embedding, assembly and
publication. The published directory is touched only by `publish`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer import faiss_index, ondisk, token_codec, token_metric
from indexer.embedding import (
    EmbedSettings,
    default_workers,
    embed_shards,
)
from indexer.errors import FactoryError, IndexerError, IndexMismatchError
from indexer.gallery import Gallery, GalleryItem, fingerprint, read_gallery
from indexer.manifest import (
    FORMAT_VERSION,
    INDEX_FILE,
    SKIPPED_FILE,
    built_with,
    now,
    read_manifest,
    write_manifest,
)
from indexer.publish import check_target, make_staging, publish, recover, writer_lock
from indexer.records import IDS_FILE, OFFSETS_FILE, RECORDS_FILE, ImageRecord, iter_records, write_records
from indexer.token_store import (
    DEFAULT_TOKEN_BYTES,
    TOKEN_FORMATS,
    decode,
    empty_layout,
    link_segments,
    write_segment,
)
from models.atomic import write_json_atomic
from models.device import inference_dtype, resolve_device
from models.interface import LoadedModel

# Photos per shard: the unit of resumption, and at most ~150 MB of fp16 ViT-B/16 tokens in memory.
DEFAULT_SHARD_SIZE = 512
# The on-disk build's per-shard FAISS blocks, inside the work directory (deleted with it).
ONDISK_BLOCKS = "ondisk-blocks"
# Bump when the shard contents change meaning, so older work directories are not reused.
WORK_FORMAT = 1


def build(
    gallery: str | os.PathLike[str] | Gallery,
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    index_type: str | None = None,
    tokens: str = "fp16",
    token_bytes: int = DEFAULT_TOKEN_BYTES,
    batch_size: int = 32,
    device: str = "auto",
    num_workers: int | None = None,
    progress: bool = True,
    root: str | os.PathLike[str] | None = None,
    name: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    patch_index: bool = False,
    patch_index_type: str | None = None,
    ray: str | None = None,
    on_disk: bool = False,
) -> Path:
    """Embed `gallery` with `checkpoint` into a new index directory published at `out`; returns `out`.

    gallery: folder, CSV / JSON Lines manifest, or split file (`root` resolves its relative paths).
    index_type: FAISS factory string; None picks one by gallery size (`faiss_index.default_factory`).
    tokens: token store format, fp16 | int8 | rq | none (rq: `token_bytes` per token,
    `indexer.token_codec`). device: auto | cpu | cuda.
    shard_size: photos per resumable shard; rerunning with the same arguments skips finished shards.
    patch_index: also index every patch token for gallery-wide synthesis (`indexer.patch_index`);
    patch_index_type: its FAISS factory (None: chosen by patch count). Needs a token store.
    ray: auto | local | HOST:PORT: embed the shards as Ray tasks on that cluster (`indexer.ray_build`;
    `device` is then the workers'); the assembly stays here.
    on_disk: keep the IVF lists in `index.ivfdata`, memory-mapped when serving (`indexer.ondisk`);
    trained once on a sample, then filled shard by shard and merged. Needs an IVF `index_type`
    (None: `ondisk.default_factory`).
    Ids are 0..N-1 in gallery order (unreadable photos keep their id unused).
    """
    # With Ray the driver's model only describes the index: it stays on the CPU.
    settings = _settings(tokens, batch_size, device if ray is None else "cpu", num_workers, shard_size, token_bytes)
    listing = gallery if isinstance(gallery, Gallery) else read_gallery(gallery, root)
    out = Path(out).expanduser().absolute()
    with writer_lock(out):
        recover(out)
        check_target(out)
        loaded = load_model(checkpoint, settings.device)
        settings = _with_token_format(settings, loaded)
        factory = index_type if index_type is not None else (
            ondisk.default_factory if on_disk else faiss_index.default_factory)(len(listing), loaded.embed_dim)
        faiss_index.check_factory(factory, loaded.embed_dim, len(listing))
        if on_disk:
            ondisk.check_factory(factory, loaded.embed_dim)
        patch_factory = _patch_factory(patch_index, patch_index_type, loaded, settings, len(listing))
        ids = np.arange(len(listing), dtype=np.int64)
        embed: Any = embed_shards
        if ray is not None:  # the same shards, embedded by Ray workers
            from indexer import ray_build

            embed = ray_build.connect(ray, device, settings, loaded)
            settings = embed.settings
        work_dir = _work_dir(out, listing, loaded, settings, first_id=0, base=None)
        shards = embed(listing.items, ids, loaded.model, _photo_preprocess(), work_dir, settings, progress)
        try:
            _stage_and_publish(out, lambda staging: _assemble_build(
                staging, shards, listing, ids, loaded, settings, factory, name or out.name, work_dir, patch_factory,
                on_disk))
        except FactoryError as error:
            # The index type is not part of the work directory's name, so the embeddings can be reused.
            raise FactoryError(f"{error}; embeddings kept in {work_dir}: rerun with another --index-type "
                               "to reuse them") from None
        _remove_work_dirs(out)
    return out


def add(
    directory: str | os.PathLike[str],
    gallery: str | os.PathLike[str] | Gallery,
    checkpoint: str | os.PathLike[str],
    *,
    batch_size: int = 32,
    device: str = "auto",
    num_workers: int | None = None,
    progress: bool = True,
    root: str | os.PathLike[str] | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
) -> Path:
    """Append the photos of `gallery` that the index at `directory` does not hold yet (same resolved
    path) with ids continuing after the last one, and re-publish it atomically; returns `directory`.

    The checkpoint must be the one the index was built with (`IndexMismatchError` otherwise); the
    token format and FAISS index type stay as built. Existing token segments are hard-linked, not copied.
    """
    directory = Path(directory).expanduser().absolute()
    listing = gallery if isinstance(gallery, Gallery) else read_gallery(gallery, root)
    with writer_lock(directory):
        recover(directory)
        manifest = read_manifest(directory)
        settings = _settings(manifest["tokens"]["format"], batch_size, device, num_workers, shard_size,
                             int((manifest["tokens"].get("codec") or {}).get("token_bytes", DEFAULT_TOKEN_BYTES)))
        loaded = load_model(checkpoint, settings.device)
        if loaded.sha256 != manifest["model"]["checkpoint_sha256"]:
            raise IndexMismatchError(
                f"{directory} was built with {built_with(manifest)}, but {loaded.path} has sha256 {loaded.sha256}"
            )
        indexed = {record.path for record in iter_records(directory)}
        # Photos a build or add could not read stay out: retrying them on every add would fail the same way.
        unreadable = skipped_paths(directory)
        new_items = tuple(item for item in listing.items
                          if str(item.path) not in indexed and str(item.path) not in unreadable)
        if not new_items:
            left_out = sum(1 for item in listing.items if str(item.path) in unreadable)
            note = f" ({left_out} of them skipped as unreadable before; rebuild to retry them)" if left_out else ""
            raise NothingToAdd(f"nothing to add: all {len(listing)} photos of {listing.source} are already "
                               f"in {directory}{note}")
        fresh = Gallery(listing.kind, listing.source, listing.root, new_items)
        first_id = int(manifest["next_id"])
        ids = np.arange(first_id, first_id + len(fresh), dtype=np.int64)
        base = {key: manifest[key] for key in ("created_at", "updated_at", "count", "next_id")}
        work_dir = _work_dir(directory, fresh, loaded, settings, first_id=first_id, base=base)
        shards = embed_shards(fresh.items, ids, loaded.model, _photo_preprocess(), work_dir, settings, progress)
        _stage_and_publish(directory, lambda staging: _assemble_add(
            staging, directory, manifest, shards, fresh, ids, settings, work_dir, loaded))
        _remove_work_dirs(directory)
    return directory


class NothingToAdd(IndexerError):
    """`add` found no photo that the index does not hold already (not a failure: the index is unchanged)."""


def skipped_paths(directory: Path) -> set[str]:
    """Paths recorded in the index's skipped.jsonl (photos that could not be read when embedded)."""
    path = directory / SKIPPED_FILE
    if not path.is_file():
        return set()
    found = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            if isinstance(entry, dict) and isinstance(entry.get("path"), str):
                found.add(entry["path"])
    return found


def load_model(checkpoint: str | os.PathLike[str], device: Any) -> LoadedModel:
    """``models.load`` onto ``device``; a checkpoint that cannot be loaded is an ``IndexerError``
    (the first line of the reason), so that the build's errors are of one kind."""
    import models

    path = Path(checkpoint).expanduser().absolute()
    if not path.is_file():
        raise IndexerError(f"checkpoint not found: {path}")
    try:
        return models.load(path, device)
    except models.CheckpointError as error:
        raise IndexerError(str(error).splitlines()[0]) from None


def _patch_factory(wanted: bool, factory: str | None, loaded: LoadedModel, settings: EmbedSettings,
                   photos: int) -> str | None:
    """The patch index's FAISS factory, checked before any embedding; None without `--patch-index`."""
    if not wanted:
        return None
    if settings.token_format == "none":
        raise IndexerError("--patch-index needs a token store (--tokens fp16 or int8) and a ZSE model")
    from indexer import patch_index

    dim = int(loaded.model.token_shape[1])
    patches = photos * int(loaded.model.config.num_tokens)
    chosen = factory if factory is not None else patch_index.default_patch_factory(patches, dim)
    patch_index.check_patch_factory(chosen, dim, patches)
    return chosen


def _photo_preprocess() -> Any:
    from models import preprocess

    return preprocess.photo


def _settings(tokens: str, batch_size: int, device: str, num_workers: int | None, shard_size: int,
              token_bytes: int = DEFAULT_TOKEN_BYTES) -> EmbedSettings:
    if tokens not in TOKEN_FORMATS:
        raise IndexerError(f"unknown token format {tokens!r}; expected one of {', '.join(TOKEN_FORMATS)}")
    if tokens == "rq":
        token_codec.sub_quantizers(token_bytes)  # the codec's own check of the budget, before any embedding
    if batch_size < 1:
        raise IndexerError(f"batch size must be at least 1, not {batch_size}")
    if shard_size < 1:
        raise IndexerError(f"shard size must be at least 1, not {shard_size}")
    workers = default_workers() if num_workers is None else num_workers
    if workers < 0:
        raise IndexerError(f"workers must be 0 or more, not {workers}")
    resolved = resolve_device(device)
    return EmbedSettings(tokens, batch_size, resolved, workers, shard_size, inference_dtype(resolved), token_bytes)


def _with_token_format(settings: EmbedSettings, loaded: LoadedModel) -> EmbedSettings:
    # Only ZSE models have tokens for relation re-ranking; an AMFF index has no token store.
    if loaded.family == "zse" or settings.token_format == "none":
        return settings
    return EmbedSettings("none", settings.batch_size, settings.device, settings.num_workers,
                         settings.shard_size, settings.autocast, settings.token_bytes)


def _work_dir(out: Path, listing: Gallery, loaded: LoadedModel, settings: EmbedSettings, *, first_id: int,
              base: dict[str, Any] | None) -> Path:
    """`.NAME.work-<digest>` next to `out`: the digest covers everything that decides the shards' bytes."""
    key = {"work_format": WORK_FORMAT, "gallery": fingerprint(listing), "checkpoint": loaded.sha256,
           "settings": settings.describe(), "first_id": first_id, "base": base}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    work_dir = out.parent / f".{out.name}.work-{digest}"
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work_dir / "work.json", {**key, "gallery_source": str(listing.source), "out": str(out)})
    return work_dir


def _remove_work_dirs(out: Path) -> None:
    """After a publish, shards of this or any older run for `out` are of no further use."""
    for work_dir in out.parent.glob(f".{out.name}.work-*"):
        shutil.rmtree(work_dir, ignore_errors=True)


def _stage_and_publish(out: Path, assemble: Any) -> None:
    staging = make_staging(out)
    try:
        assemble(staging)
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@dataclass
class _ShardContents:
    ids: np.ndarray  # int64 [M] readable photos, increasing
    vectors: np.ndarray  # float32 [M, D]
    skipped: list[dict[str, Any]]
    token_shape: tuple[int, int] | None
    kept: int | None


def _read_shards(shards: Sequence[Path]) -> _ShardContents:
    ids: list[np.ndarray] = []
    vectors: list[np.ndarray] = []
    skipped: list[dict[str, Any]] = []
    token_shape = kept = None
    for path in shards:
        with np.load(path, allow_pickle=False) as shard:
            skipped.extend(json.loads(line) for line in shard["skipped"])
            if len(shard["ids"]) == 0:
                continue
            ids.append(shard["ids"])
            vectors.append(shard["vectors"])
            if token_shape is None and "tokens" in shard.files:
                token_shape = tuple(shard["tokens"].shape[1:])
                kept = shard["kept"].shape[1] if "kept" in shard.files else None
    if not ids:
        return _ShardContents(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), skipped, None, None)
    return _ShardContents(np.concatenate(ids), np.concatenate(vectors), skipped, token_shape, kept)


def _shard_vectors(shards: Sequence[Path]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(vectors float32 [M, D], ids int64 [M]) shard by shard, for a build that adds shards one at a time."""
    for path in shards:
        with np.load(path, allow_pickle=False) as shard:
            yield shard["vectors"], shard["ids"]


def _token_chunks(shards: Sequence[Path]) -> Iterator[dict[str, np.ndarray]]:
    """Token arrays shard by shard, so the whole store is never in memory at once."""
    for path in shards:
        with np.load(path, allow_pickle=False) as shard:
            if "tokens" in shard.files:
                yield {name: shard[name] for name in ("tokens", "scales", "kept") if name in shard.files}


def _codec_samples(shards: Sequence[Path], limit: int = token_codec.TRAIN_SAMPLE, photos: int = 256,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """What an rq codec is trained from, in one pass over the shards:

    - up to ``limit`` token vectors [n, D] float32, drawn evenly from every shard (the codebooks);
    - up to ``photos`` photos' tokens [P, T', D] float32 and kept positions [P, n] (or None), spread
      evenly over the shards and over each shard's rows, since a gallery is often sorted by class
      (the relation sensitivity, ``indexer.token_metric``); None when no shard has a photo.
    """
    parts: list[np.ndarray] = []
    picked: list[np.ndarray] = []
    picked_kept: list[np.ndarray] = []
    per_shard = max(1, -(-photos // max(len(shards), 1)))
    for chunk in _token_chunks(shards):
        tokens = np.asarray(chunk["tokens"], dtype=np.float32)
        parts.append(tokens.reshape(-1, tokens.shape[-1]))
        if len(tokens) == 0:
            continue
        rows = np.unique(np.linspace(0, len(tokens) - 1, per_shard).astype(np.int64))
        picked.append(tokens[rows])
        if "kept" in chunk:
            picked_kept.append(np.asarray(chunk["kept"][rows]))
    total = sum(len(part) for part in parts)
    rng = np.random.default_rng(seed)
    share = min(1.0, limit / max(total, 1))
    vectors = np.concatenate([part[rng.random(len(part)) < share] if share < 1.0 else part for part in parts])
    if not picked:
        return vectors, None, None
    return (vectors, np.concatenate(picked)[:photos],
            np.concatenate(picked_kept)[:photos] if picked_kept else None)


def _rq_chunks(codec: Any, chunks: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
    """fp16 shard chunks -> the same chunks with ``tokens`` as the codec's uint8 codes [b, T, C]."""
    for chunk in chunks:
        yield {**chunk, "tokens": token_codec.encode(codec, np.asarray(chunk["tokens"], dtype=np.float32))}


def anchor_shape(model: Any, token_format: str) -> tuple[int, int] | None:
    """(A, K) when an index of ``model`` stores each photo's self-attention anchors, else None.

    Only models with a pre-scorer read them (a ``prescoreM`` search), and only fp16 and int8 stores
    keep them: at 4 bytes a value they would outweigh an rq store's codes several times over, and
    an rq index is chosen to be small, so its prescore searches compute them from the tokens.
    """
    if getattr(model, "prescorer", None) is None or token_format not in ("fp16", "int8"):
        return None
    return int(model.config.num_anchors), int(model.config.kernel_dim)


def anchor_chunks(model: Any, device: Any, chunks: Iterator[dict[str, np.ndarray]]
                   ) -> Iterator[dict[str, np.ndarray]]:
    """Shard chunks with ``anchors`` [b, A, K] float32 added, computed from the tokens as the store
    will return them (``token_store.decode``), so a search reads what it would have computed."""
    import torch

    from models.prescore import float32_anchors

    for chunk in chunks:
        tokens = torch.from_numpy(decode(chunk["tokens"], chunk.get("scales"))).to(device)
        kept = None if chunk.get("kept") is None else torch.from_numpy(chunk["kept"].astype(np.int64)).to(device)
        yield {**chunk, "anchors": float32_anchors(model, tokens, kept).cpu().numpy()}


def _no_photos_error(contents: _ShardContents, work_dir: Path, listed: int) -> IndexerError:
    report = work_dir / SKIPPED_FILE
    _write_skipped(report, contents.skipped)
    return IndexerError(f"none of the {listed} listed photos could be read; reasons in {report}")


def _write_skipped(path: Path, entries: Sequence[dict[str, Any]], previous: Path | None = None) -> None:
    with open(path, "wb") as handle:
        if previous is not None and previous.exists():
            handle.write(previous.read_bytes())
        for entry in entries:
            handle.write((json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n").encode())


def _records(items: Sequence[GalleryItem], ids: np.ndarray, kept_ids: np.ndarray) -> list[ImageRecord]:
    position_of = {int(image_id): position for position, image_id in enumerate(ids)}
    records = []
    for image_id in kept_ids:
        item = items[position_of[int(image_id)]]
        records.append(ImageRecord(int(image_id), str(item.path), item.label, dict(item.metadata), item.key))
    return records


def _gallery_entry(listing: Gallery, ids: np.ndarray, skipped: int) -> dict[str, Any]:
    return {**listing.describe(), "fingerprint": fingerprint(listing), "first_id": int(ids[0]),
            "last_id": int(ids[-1]), "skipped": skipped, "added_at": now()}


def is_current(out: str | os.PathLike[str], gallery: str | os.PathLike[str], checkpoint: str | os.PathLike[str],
               *, root: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``out`` is a published index of exactly this gallery (the same listing, sizes and
    mtimes: ``gallery.fingerprint``) embedded with exactly this checkpoint (sha256), and written
    since the token layout records its pre-scorer anchors (an older one is rebuilt, which may add
    them), so that ``sbir index build --skip-current`` may leave it as it is."""
    import models

    directory = Path(out).expanduser().absolute()
    if not (directory / "manifest.json").is_file():
        return False
    manifest = read_manifest(directory)
    entries = manifest.get("galleries", [])
    listing = read_gallery(gallery, root)
    return (len(entries) == 1 and entries[0].get("fingerprint") == fingerprint(listing)
            and "anchors" in manifest.get("tokens", {})
            and manifest["model"]["checkpoint_sha256"] == models.checkpoint_hash(checkpoint))


def _assemble_build(staging: Path, shards: Sequence[Path], listing: Gallery, ids: np.ndarray, loaded: LoadedModel,
                    settings: EmbedSettings, factory: str, name: str, work_dir: Path,
                    patch_factory: str | None = None, on_disk: bool = False) -> None:
    """Write a complete index directory into `staging` from finished shards."""
    import faiss

    from models import preprocess

    contents = _read_shards(shards)
    if len(contents.ids) == 0:
        raise _no_photos_error(contents, work_dir, len(listing))
    if on_disk:  # trained once, then one block per shard, merged into staging/index.ivfdata
        trained = faiss_index.train_empty(factory, contents.vectors)
        index = ondisk.build(_shard_vectors(shards), trained, staging, work_dir / ONDISK_BLOCKS)
    else:
        index = faiss_index.build_index(contents.vectors, contents.ids, factory)
    params = faiss_index.default_search_params(index)
    faiss.write_index(index, str(staging / INDEX_FILE))
    token_format = settings.token_format if contents.token_shape else "none"
    layout = empty_layout(token_format, contents.token_shape, contents.kept, settings.token_bytes,
                          anchor_shape(loaded.model, token_format))
    if layout["format"] != "none":
        chunks = _token_chunks(shards)
        if layout["anchors"]:
            chunks = anchor_chunks(loaded.model, loaded.device, chunks)
        if layout["format"] == "rq":
            vectors, photos, kept = _codec_samples(shards)
            transform = None if photos is None else token_metric.coding_transform(loaded.model, photos, kept)
            codec = token_codec.train(vectors, settings.token_bytes, transform=transform)
            token_codec.save(codec, staging)
            chunks = _rq_chunks(codec, chunks)
        layout["segments"].append(write_segment(staging, layout, len(contents.ids), chunks))
    records = _records(listing.items, ids, contents.ids)
    write_records(staging, records)
    _write_skipped(staging / SKIPPED_FILE, contents.skipped)
    extra: dict[str, Any] = {}
    if patch_factory is not None and layout["format"] != "none":
        from indexer.patch_index import build_patch_index

        extra["patch_index"] = build_patch_index(staging, layout, contents.ids, [r.path for r in records],
                                                 patch_factory, loaded.model.config)
    created = now()
    write_manifest(staging, {
        "format_version": FORMAT_VERSION,
        "name": name,
        "created_at": created,
        "updated_at": created,
        "model": loaded.describe(),
        "preprocessing": {"function": "models.preprocess.photo", **preprocess.DESCRIPTION},
        "embedding": settings.describe(),
        "dimension": int(contents.vectors.shape[1]),
        "count": int(len(contents.ids)),
        "next_id": int(ids[-1]) + 1,
        "skipped": len(contents.skipped),
        "faiss": {**faiss_index.metadata(index, factory, params), **ondisk.metadata(on_disk)},
        "tokens": layout,
        "galleries": [_gallery_entry(listing, ids, len(contents.skipped))],
        "files": _file_names(),
        **extra,
    })


def _assemble_add(staging: Path, directory: Path, manifest: dict[str, Any], shards: Sequence[Path],
                  fresh: Gallery, ids: np.ndarray, settings: EmbedSettings, work_dir: Path,
                  loaded: LoadedModel) -> None:
    """Write `directory`'s index extended by the new shards into `staging`."""
    import faiss

    contents = _read_shards(shards)
    if len(contents.ids) == 0:
        raise _no_photos_error(contents, work_dir, len(fresh))
    if contents.vectors.shape[1] != manifest["dimension"]:
        raise IndexMismatchError(f"new vectors have dimension {contents.vectors.shape[1]}, "
                                 f"the index {manifest['dimension']}")
    on_disk = ondisk.is_on_disk(manifest["faiss"])
    if on_disk:  # the published lists and a block of the new photos, merged into a new lists file
        index = ondisk.add(directory, contents.vectors, contents.ids, staging, work_dir / ONDISK_BLOCKS)
    else:
        index = faiss_index.add_to_index(faiss.read_index(str(directory / INDEX_FILE)), contents.vectors,
                                         contents.ids)
    faiss.write_index(index, str(staging / INDEX_FILE))
    layout = json.loads(json.dumps(manifest["tokens"]))
    if layout["format"] != "none":
        if contents.token_shape is None or list(contents.token_shape) != layout["shape"]:
            raise IndexMismatchError(f"new tokens have shape {contents.token_shape}, the store {layout['shape']}")
        link_segments(directory, staging, layout)
        chunks = _token_chunks(shards)
        if layout.get("anchors"):  # an index built before anchors were stored goes on without them
            chunks = anchor_chunks(loaded.model, loaded.device, chunks)
        if layout["format"] == "rq":  # new photos in the published codec: the store stays one code space
            chunks = _rq_chunks(token_codec.load(directory), chunks)
        layout["segments"].append(write_segment(staging, layout, len(contents.ids), chunks))
    records = _records(fresh.items, ids, contents.ids)
    write_records(staging, records, previous=directory)
    extra: dict[str, Any] = {}
    if manifest.get("patch_index") is not None:
        # The patch index grows with the gallery, as the FAISS index does (no retraining).
        from indexer.patch_index import extend_patch_index

        extra["patch_index"] = extend_patch_index(directory, staging, manifest["patch_index"], layout, contents.ids,
                                                  [r.path for r in records], int(manifest["count"]),
                                                  loaded.model.config)
    _write_skipped(staging / SKIPPED_FILE, contents.skipped, previous=directory / SKIPPED_FILE)
    params = faiss_index.stored_search_params(manifest["faiss"])
    write_manifest(staging, {
        **manifest,
        "updated_at": now(),
        "count": int(manifest["count"]) + len(contents.ids),
        "next_id": int(ids[-1]) + 1,
        "skipped": int(manifest.get("skipped", 0)) + len(contents.skipped),
        "faiss": {**faiss_index.metadata(index, manifest["faiss"]["factory"], params), **ondisk.metadata(on_disk)},
        "tokens": layout,
        "galleries": [*manifest.get("galleries", []), _gallery_entry(fresh, ids, len(contents.skipped))],
        **extra,
    })


def _file_names() -> dict[str, str]:
    return {"index": INDEX_FILE, "ids": IDS_FILE, "records": RECORDS_FILE, "record_offsets": OFFSETS_FILE,
            "skipped": SKIPPED_FILE}
