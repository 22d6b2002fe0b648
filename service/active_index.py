"""Which index the server serves across restarts: `<index root>/active-index.json`.

Written (atomically, `models.atomic`) whenever the server swaps in an index through the API (`POST
/index/activate`, or a build with `activate`), read at start-up. It records the index's name under
the index root and the `SBIR_INDEX_DIR` the server was started with: the recorded index wins at the
next start only while that setting is unchanged, so an operator who points `--index` somewhere
new gets what they asked for.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from indexer.manifest import MANIFEST_FILE
from models.atomic import write_json_atomic

STATE_FILE = "active-index.json"

logger = logging.getLogger("service.active_index")


def _configured(index_dir: Path | None) -> str | None:
    return None if index_dir is None else str(Path(index_dir).expanduser().absolute())


def record_active(index_root: Path, directory: Path, configured: Path | None) -> Path:
    """Remember that `directory` (under `index_root`) is served; returns the state file."""
    state = {"name": directory.name, "directory": str(directory.absolute()), "configured_index_dir": _configured(configured),
             "activated_at": datetime.now(UTC).isoformat(timespec="seconds")}
    return write_json_atomic(index_root / STATE_FILE, state)


def recorded_active(index_root: Path | None, configured: Path | None) -> Path | None:
    """The index directory to serve instead of `configured`, or None (no state, another setting, or
    a recorded index that is gone: each said in the log)."""
    if index_root is None:
        return None
    path = index_root / STATE_FILE
    try:
        state: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning("ignoring %s: unreadable (%s)", path, error)
        return None
    name = state.get("name") if isinstance(state, dict) else None
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        logger.warning("ignoring %s: no index name in it", path)
        return None
    if state.get("configured_index_dir") != _configured(configured):
        logger.info("ignoring %s (index %s): the server was started with another SBIR_INDEX_DIR", path, name)
        return None
    directory = index_root / name
    if not (directory / MANIFEST_FILE).is_file():
        logger.warning("ignoring %s: the index %s it names is gone", path, directory)
        return None
    return directory
