"""Gallery readers: turn a folder, a manifest (CSV / JSON Lines) or a reference split file into items.

Every reader returns a `Gallery` whose items are in a stable order, so that a rebuild of the same
gallery gives every photo the same id. Readers only list; they never open the images (a broken
image is the embedding step's business: it is skipped and reported there, and the build goes on).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.errors import GalleryError

# Suffixes a folder gallery picks up (compared lower-case). Manifests and split files may name any file.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
CSV_SUFFIXES = frozenset({".csv"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})


@dataclass(frozen=True)
class GalleryItem:
    """One photo of a gallery.

    key:      the gallery's own identifier: the manifest's `id`, else the path relative to the
              gallery root (POSIX separators). Unique within a gallery.
    path:     absolute path of the image file.
    label:    class name (folder galleries: the parent folder's name), or None.
    metadata: free-form JSON-serialisable fields from a manifest.
    """

    key: str
    path: Path
    label: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Gallery:
    """A listed gallery: `kind` is "folder", "csv", "jsonl" or "split"; `items` in id order."""

    kind: str
    source: Path
    root: Path
    items: tuple[GalleryItem, ...]

    def __len__(self) -> int:
        return len(self.items)

    def describe(self) -> dict[str, Any]:
        """What the manifest records about where the photos came from."""
        return {"kind": self.kind, "source": str(self.source), "root": str(self.root), "listed": len(self.items)}


def read_gallery(path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Gallery:
    """List a gallery; raise `GalleryError` (one line) when it is missing, malformed or empty.

    path: a folder (recursive; label = parent folder name), a `.csv` or `.jsonl` manifest, or any
          other file read as a reference split file (`relative/path label` per line).
    root: folder that relative paths of a split file or manifest are resolved against; defaults to
          the folder holding that file. Not allowed with a folder gallery.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise GalleryError(f"gallery not found: {source}")
    if source.is_dir():
        if root is not None:
            raise GalleryError("--root applies to manifest and split files, not to a folder gallery")
        gallery = Gallery("folder", source.resolve(), source.resolve(), tuple(_read_folder(source.resolve())))
    else:
        base = Path(root).expanduser().resolve() if root is not None else source.resolve().parent
        if root is not None and not base.is_dir():
            raise GalleryError(f"gallery root not found: {base}")
        suffix = source.suffix.lower()
        if suffix in CSV_SUFFIXES:
            kind, rows = "csv", _read_csv_rows(source)
        elif suffix in JSONL_SUFFIXES:
            kind, rows = "jsonl", _read_jsonl_rows(source)
        else:
            kind, rows = "split", _read_split_rows(source)
        gallery = Gallery(kind, source.resolve(), base, tuple(_items_from_rows(rows, base, source)))
    if not gallery.items:
        raise GalleryError(f"gallery is empty: {source}")
    return gallery


def fingerprint(gallery: Gallery) -> str:
    """sha256 over the listing and each file's size and mtime: a changed photo changes the digest.

    Used to name the resumable work directory, so shards from an older listing are never reused.
    """
    digest = hashlib.sha256(gallery.kind.encode())
    for item in gallery.items:
        try:
            stat = item.path.stat()
            state: list[int] | None = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            state = None
        line = [item.key, str(item.path), item.label, item.metadata, state]
        digest.update(json.dumps(line, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _read_folder(root: Path) -> Iterator[GalleryItem]:
    """Images under `root` sorted by relative path; hidden files and folders are left out."""
    found: list[tuple[str, Path]] = []
    seen_dirs: set[str] = set()
    # followlinks: galleries are often assembled from symlinked class folders; the realpath set stops loops.
    for directory, subdirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen_dirs:
            subdirs[:] = []
            continue
        seen_dirs.add(real)
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            file_path = Path(directory) / name
            found.append((file_path.relative_to(root).as_posix(), file_path))
    found.sort(key=lambda pair: pair[0])
    for relative, file_path in found:
        parent = Path(relative).parent
        # A photo directly in the gallery root has no class folder, hence no label.
        label = parent.name if parent != Path(".") else None
        yield GalleryItem(key=relative, path=file_path, label=label)


@dataclass(frozen=True)
class _Row:
    """A manifest or split-file line before paths are resolved; `line` is for error messages."""

    line: int
    key: str | None
    path: str
    label: str | None
    metadata: dict[str, Any]


def _items_from_rows(rows: Iterable[_Row], base: Path, source: Path) -> Iterator[GalleryItem]:
    seen: dict[str, int] = {}
    for row in rows:
        if not row.path:
            raise GalleryError(f"{source}:{row.line}: empty path")
        key = row.key if row.key is not None else row.path
        if key in seen:
            raise GalleryError(f"{source}:{row.line}: duplicate id {key!r} (first at line {seen[key]})")
        seen[key] = row.line
        file_path = Path(row.path).expanduser()
        if not file_path.is_absolute():
            file_path = base / file_path
        yield GalleryItem(key=key, path=file_path, label=row.label, metadata=row.metadata)


def _clean_label(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _clean_key(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _open_text(source: Path):
    try:
        # utf-8-sig: spreadsheets often save a BOM that would otherwise stick to the first column name.
        return source.open("r", encoding="utf-8-sig", newline="")
    except OSError as error:
        raise GalleryError(f"cannot read gallery file {source}: {error.strerror}") from error


def _read_csv_rows(source: Path) -> Iterator[_Row]:
    """CSV manifest: columns `path` (required), `id`, `label`, `metadata` (a JSON object); other
    columns go into metadata as strings."""
    with _open_text(source) as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in (reader.fieldnames or [])]
        if "path" not in columns:
            raise GalleryError(f"{source}: manifest has no 'path' column (columns: {', '.join(columns) or 'none'})")
        reader.fieldnames = columns
        for row in reader:
            line = reader.line_num
            metadata: dict[str, Any] = {}
            raw_metadata = (row.get("metadata") or "").strip()
            if raw_metadata:
                metadata.update(_parse_metadata(raw_metadata, source, line))
            for name, value in row.items():
                if name in {"id", "path", "label", "metadata"} or name is None:
                    continue
                if value is not None and value != "":
                    metadata[name] = value
            yield _Row(line, _clean_key(row.get("id")), (row.get("path") or "").strip(),
                       _clean_label(row.get("label")), metadata)


def _read_jsonl_rows(source: Path) -> Iterator[_Row]:
    """JSON Lines manifest: one object per line with `path` (required), `id`, `label`, `metadata`
    (an object); other keys are merged into metadata."""
    with _open_text(source) as handle:
        for line_number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise GalleryError(f"{source}:{line_number}: invalid JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise GalleryError(f"{source}:{line_number}: expected a JSON object")
            if not isinstance(record.get("path"), str):
                raise GalleryError(f"{source}:{line_number}: missing 'path' string")
            metadata = record.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise GalleryError(f"{source}:{line_number}: 'metadata' must be an object")
            metadata = dict(metadata)
            for name, value in record.items():
                if name not in {"id", "path", "label", "metadata"}:
                    metadata[name] = value
            yield _Row(line_number, _clean_key(record.get("id")), record["path"].strip(),
                       _clean_label(record.get("label")), metadata)


def _read_split_rows(source: Path) -> Iterator[_Row]:
    """Reference split file (ZSE-SBIR style): `relative/path label` per line; the label is the last
    whitespace-separated field, so paths may contain spaces. Blank lines and `#` comments are skipped."""
    with _open_text(source) as handle:
        for line_number, text in enumerate(handle, start=1):
            text = text.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise GalleryError(f"{source}:{line_number}: expected 'relative/path label', got {text!r}")
            path, label = parts
            yield _Row(line_number, None, path.strip(), _clean_label(label), {})


def _parse_metadata(text: str, source: Path, line: int) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise GalleryError(f"{source}:{line}: 'metadata' is not valid JSON ({error.msg})") from error
    if not isinstance(value, dict):
        raise GalleryError(f"{source}:{line}: 'metadata' must be a JSON object")
    return value
