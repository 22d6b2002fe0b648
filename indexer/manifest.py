"""`manifest.json` of an index directory: what was indexed, with which model, and how it is stored."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from indexer.errors import IndexerError
from indexer.publish import MANIFEST_FILE
from models.atomic import write_json_atomic

# Bump when a reader of the previous version would misread the directory.
FORMAT_VERSION = 1

INDEX_FILE = "index.faiss"
SKIPPED_FILE = "skipped.jsonl"


def now() -> str:
    """UTC time, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of `directory`; `IndexerError` (one line) when it is not a readable index directory."""
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise IndexerError(f"index directory not found: {directory}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexerError(f"not an index directory (no {MANIFEST_FILE}): {directory}") from None
    except (OSError, json.JSONDecodeError) as error:
        raise IndexerError(f"unreadable {path}: {error}") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int):
        raise IndexerError(f"{path}: no format_version; not an index written by this indexer")
    if version > FORMAT_VERSION:
        raise IndexerError(f"{path}: format_version {version} is newer than this indexer reads ({FORMAT_VERSION})")
    return manifest


def built_with(manifest: dict[str, Any]) -> str:
    """``checkpoint PATH (sha256 HEX)`` of the model an index was built with, for mismatch errors."""
    model = manifest.get("model", {})
    path = model.get("checkpoint_path")
    where = f"checkpoint {path}" if path else "a checkpoint (path not recorded)"
    return f"{where} (sha256 {model.get('checkpoint_sha256')})"


def manifest_signature(directory: Path) -> tuple[int, ...] | None:
    """(inode, size, mtime ns) of an index directory's manifest, None when it is not there: each
    publish renames a new directory into place, so a republished index has another manifest file."""
    try:
        found = (Path(directory) / MANIFEST_FILE).stat()
    except OSError:
        return None
    return (found.st_ino, found.st_size, found.st_mtime_ns)


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(directory / MANIFEST_FILE, manifest)
