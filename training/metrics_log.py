"""The metrics log of a training run: ``run_dir/metrics.jsonl`` and, when installed, TensorBoard.

One strict-JSON record a line (NaN / inf as null), each with ``time`` and ``event`` (start, resume,
train, validation, diverged, end). The file is appended to and flushed after every record, not
rewritten: a resumed run continues it, and a crashed process loses at most the line it was writing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.atomic import finite_or_none

METRICS_LOG = "metrics.jsonl"


class MetricsLog:
    """JSON Lines in ``run_dir/metrics.jsonl`` (appended, so a resumed run continues the file), and
    TensorBoard scalars when the package is installed. Writes nothing on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.path = run_dir / METRICS_LOG
        self.stream = open(self.path, "a", encoding="utf-8") if enabled else None  # noqa: SIM115
        self.writer: Any = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSON Lines only
                SummaryWriter = None  # type: ignore[assignment,misc]  # noqa: N806
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` with the current time; its numbers also go to TensorBoard as
        ``<event>/<key path>`` at ``record["step"]``."""
        if self.stream is None:
            return
        record = finite_or_none({"time": time.time(), **record})  # strict JSON: NaN -> null
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()
        if self.writer is not None and "step" in record:
            for key, value in flatten(record).items():
                if isinstance(value, int | float) and key not in ("time", "step", "epoch"):
                    self.writer.add_scalar(f"{record.get('event', 'train')}/{key}", value, record["step"])

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        if self.writer is not None:
            self.writer.close()


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of ``"outer/inner"`` keys (TensorBoard tag paths)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
