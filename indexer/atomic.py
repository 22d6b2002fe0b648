"""Atomic file writes: write `name.tmp-<pid>`, flush to disk, then `os.replace` onto the final name.

A reader (or a resumed build) therefore sees either the whole old file, the whole new file, or
no file, never a half-written one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def write_atomic(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Call `write(handle)` on a temporary sibling of `path`, fsync it, and rename it into place."""
    final = Path(path)
    temporary = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return final


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    return write_atomic(path, lambda handle: handle.write(data))


def write_json_atomic(path: str | os.PathLike[str], value: Any) -> Path:
    """JSON with sorted keys and a trailing newline (stable bytes for equal values)."""
    text = json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
    return write_bytes_atomic(path, text.encode())


def save_npz_atomic(path: str | os.PathLike[str], **arrays: np.ndarray) -> Path:
    """Uncompressed `.npz` (np.savez on an open handle, so numpy adds no suffix)."""
    savez: Any = np.savez  # numpy's stubs read **arrays as its allow_pickle flag
    return write_atomic(path, lambda handle: savez(handle, **arrays))


def save_npy_atomic(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    return write_atomic(path, lambda handle: np.save(handle, array, allow_pickle=False))


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """Make a rename inside `path` durable; a no-op where directories cannot be opened (non-POSIX)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
