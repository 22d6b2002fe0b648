"""Confining paths from requests to the configured data roots.

A path is accepted only when its real path (symlinks resolved) lies inside the real path of one
of the roots; `..` components are refused outright, whatever they would resolve to.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from service.errors import ForbiddenError, InvalidInputError


def resolve_under_roots(raw: str, roots: Sequence[Path], field: str, *, must_exist: bool = True,
                        also: Path | None = None) -> Path:
    """Resolve a client-supplied path against the data roots.

    raw: absolute, or relative to a data root (the first root in which it exists, else the first).
    also: one more file accepted wherever it lies when `raw` names it by an absolute path (the
    served checkpoint: the server's own weights are not a secret of the data roots).
    Raises InvalidInputError for malformed paths, `..` or (with must_exist) a missing path (code
    `data_root_missing` when the data root it would lie under is itself missing);
    ForbiddenError when no root is configured or the real path escapes every root.
    """
    if not raw or "\x00" in raw:
        raise InvalidInputError("invalid_path", f"{field}: empty or malformed path", field=field)
    if also is not None and os.path.isabs(raw) and _same_file(raw, also):
        return Path(os.path.realpath(raw))
    if ".." in PurePosixPath(raw.replace("\\", "/")).parts:
        raise InvalidInputError("invalid_path", f"{field}: '..' is not allowed in paths", field=field)
    if not roots:
        raise ForbiddenError("no_data_roots", f"{field}: no data roots are configured (set SBIR_DATA_ROOTS)",
                             field=field)
    real_roots = _real_paths(roots)
    try:
        candidate = Path(raw).expanduser()
    except RuntimeError:  # '~name' of a user this machine does not know
        raise InvalidInputError("invalid_path", f"{field}: {raw!r} names an unknown home directory",
                                field=field) from None
    if candidate.is_absolute():
        candidates = [candidate]
    else:
        candidates = [root / candidate for root in real_roots]
    try:
        chosen = next((path for path in candidates if path.exists()), candidates[0])
        real = Path(os.path.realpath(chosen))
        if not _inside(real, real_roots):
            raise ForbiddenError("path_outside_data_roots",
                                 f"{field}: {raw!r} is outside the configured data roots", field=field)
        exists = real.exists()
    except OSError as error:  # e.g. a name too long for the file system (ENAMETOOLONG)
        raise InvalidInputError("invalid_path", f"{field}: unusable path ({error.strerror or error})",
                                field=field) from None
    if must_exist and not exists:
        missing = [root for root in real_roots if real.is_relative_to(root) and not root.is_dir()]
        if missing:  # the configured folder itself is not there: say so, not just "no such gallery"
            raise InvalidInputError("data_root_missing", f"{field}: {raw!r} does not exist: the data root "
                                    f"{missing[0]} is missing", field=field)
        raise InvalidInputError("path_not_found", f"{field}: {raw!r} does not exist", field=field)
    return real


def outside_roots(paths: Sequence[Path], roots: Sequence[Path]) -> list[Path]:
    """The paths whose real path (symlinks resolved) lies under none of the roots."""
    real_roots = _real_paths(roots)
    return [path for path in paths if not _inside(Path(os.path.realpath(path)), real_roots)]


def _real_paths(roots: Sequence[Path]) -> list[Path]:
    return [Path(os.path.realpath(root)) for root in roots]


def _inside(real: Path, real_roots: Sequence[Path]) -> bool:
    """Whether a real path (symlinks resolved) is one of the real roots or lies below one."""
    return any(real.is_relative_to(root) for root in real_roots)


def _same_file(raw: str, other: Path) -> bool:
    """Whether `raw` and `other` are one path after resolving symlinks."""
    try:
        return os.path.realpath(raw) == os.path.realpath(other)
    except (OSError, ValueError):
        return False
