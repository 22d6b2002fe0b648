"""Publishing an index directory: build in a private sibling folder, then swap it in with renames.

`out` itself is only ever touched by `publish`, after the new directory is complete, so a build
that fails or is killed leaves the published index as it was. The swap is one atomic
`renameat2(RENAME_EXCHANGE)` on Linux file systems that support it (no moment without an index);
elsewhere the old directory is renamed aside and the new one renamed into place, which leaves a
window of two `rename` calls (microseconds) in which `out` does not exist. A crash inside that
window is undone by `recover` at the start of the next build or add.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from indexer.errors import IndexerError
from models.atomic import fsync_directory

MANIFEST_FILE = "manifest.json"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def check_target(out: Path) -> None:
    """Refuse to replace something that is not an index directory (a typo must not delete photos)."""
    if out.exists() and not (out.is_dir() and (out / MANIFEST_FILE).is_file()):
        raise IndexerError(f"--out {out} exists and is not an index directory (no {MANIFEST_FILE}); "
                           "choose a new path or remove it")


def make_staging(out: Path) -> Path:
    """A new empty sibling folder of `out`, named after it and this process id."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{os.getpid()}-", dir=out.parent))
    # mkdtemp makes the folder 0700; it becomes the published index, which should have the
    # permissions of any folder made here (0777 less the umask), so that a server of another user
    # (or a backup job) can read it.
    staging.chmod(0o777 & ~_umask())
    return staging


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (os.umask sets as it reads,
    which would briefly open files that other threads create meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def publish(staging: Path, out: Path) -> None:
    """Make the complete directory `staging` appear as `out`, replacing an older index there."""
    fsync_directory(staging)
    if not out.exists():
        os.rename(staging, out)
    elif _exchange(staging, out):
        shutil.rmtree(staging)  # it now holds the old index
    else:
        aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(out, aside)
        os.rename(staging, out)
        shutil.rmtree(aside, ignore_errors=True)
    fsync_directory(out.parent)


def recover(out: Path) -> None:
    """Undo a publish interrupted between its two renames, and drop staging folders of dead builds."""
    parent = out.parent
    if not parent.is_dir():
        return
    if not out.exists():
        olds = [path for path in parent.glob(f".{out.name}.old-*") if (path / MANIFEST_FILE).is_file()]
        if len(olds) == 1:
            os.rename(olds[0], out)
    for staging in parent.glob(f".{out.name}.staging-*"):
        pid = _pid_of(staging.name, out.name)
        if pid is not None and not process_alive(pid):
            shutil.rmtree(staging, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths with Linux renameat2; False where that is not available."""
    if sys.platform != "linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    return result == 0


def _pid_of(name: str, out_name: str) -> int | None:
    rest = name[len(f".{out_name}.staging-"):]
    head = rest.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (ours counts; one we may not signal counts too)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def writer_lock(out: Path) -> Iterator[None]:
    """Hold `.NAME.lock` next to `out` while building or adding, so two writers cannot both publish
    from the same old index (the second would silently drop the first one's photos)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    with open(lock_path, "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locks; the caller keeps to one writer
            yield
            return
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexerError(f"another build or add is writing {out} (lock {lock_path} is held)") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
