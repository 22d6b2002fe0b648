"""The project's one atomic writer: write `name.tmp-<pid>`, flush to disk, then `os.replace` onto the
final name. Indexes, manifests, checkpoints, job records, reports and benchmark results all go
through it, so a reader (or a resumed build) sees either the whole old file, the whole new file, or
no file, never a half-written one.
"""

from __future__ import annotations

import json
import math
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


def finite_or_none(value: Any) -> Any:
    """NaN / inf -> None, recursively: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    return value


def write_json_atomic(path: str | os.PathLike[str], value: Any, *, sort_keys: bool = True) -> Path:
    """Strict JSON (NaN / inf as null), indented, with a trailing newline; sorted keys by default
    (stable bytes for equal values), or in the order given (reports read top-down). The parent
    folder is created."""
    text = json.dumps(finite_or_none(value), indent=2, sort_keys=sort_keys, default=str, allow_nan=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, (text + "\n").encode())


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
