"""The checkpoints of a training run and its resumption.

``run_dir/checkpoints/last.pt`` holds the model and everything needed to continue exactly: step,
optimizer, scheduler, scaler, the best validation so far, and the RNG states of every process.
``run_dir/checkpoints/best.pt`` holds the best validated model. Both are this project's checkpoint
format, written atomically by :func:`models.checkpoint.save_checkpoint`, so a reader (or a resumed
run) never sees a half-written one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.errors import SbirError
from training.config import ConfigError, TrainConfig
from training.objectives import unwrap
from training.runtime import Runtime, gather, rng_state, set_rng_state

LAST = "last.pt"
BEST = "best.pt"
# Settings that may change between an interrupted run and its resumption without changing what is
# computed (or that only lengthen the run).
RESUMABLE_CHANGES = frozenset(
    {
        "resume",
        "device",
        "progress_bar",
        "tensorboard",
        "data.num_workers",
        "data.root",
        "schedule.epochs",
        "schedule.max_steps",
        "schedule.log_every",
        "schedule.checkpoint_every",
    }
)


class TrainingError(SbirError, RuntimeError):
    """A run that cannot start or continue (nothing to resume, an incompatible checkpoint...)."""


@dataclass
class RunState:
    """What the loop carries between steps and through a resumption."""

    step: int = 0
    best_map: float | None = None
    best_step: int | None = None
    best_epoch: int | None = None
    last_saved_step: int | None = None
    validations: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_paths(run_dir: Path) -> tuple[Path, Path]:
    """(last.pt, best.pt) of the run in ``run_dir``."""
    checkpoints = run_dir / "checkpoints"
    return checkpoints / LAST, checkpoints / BEST


def check_can_start(config: TrainConfig) -> None:
    """Refuse to resume a run that has no last checkpoint, or to start over one that has.

    Raises:
        TrainingError: naming the checkpoint.
    """
    run_dir = Path(config.run_dir)
    last_path, _ = checkpoint_paths(run_dir)
    if config.resume and not last_path.is_file():
        raise TrainingError(f"nothing to resume: {last_path} does not exist")
    if not config.resume and last_path.is_file():
        raise TrainingError(
            f"{run_dir} already holds a run ({last_path}); resume it or choose another run_dir"
        )


def lock_path(run_dir: Path) -> Path:
    """The writer lock of ``run_dir``: ``.NAME.lock`` beside it, as ``indexer.publish.writer_lock`` keeps."""
    run_dir = run_dir.absolute()
    return run_dir.parent / f".{run_dir.name}.lock"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the writer lock of ``run_dir`` (``indexer.publish.writer_lock``) for a whole training, so
    that a second training of the same run directory fails at once instead of interleaving its
    metrics and checkpoints with the first's. The holder's pid is written into the lock file.

    Raises:
        TrainingError: another process holds it (naming the directory and that process's pid).
    """
    from indexer.errors import IndexerError
    from indexer.publish import writer_lock

    path = lock_path(run_dir)
    with ExitStack() as stack:
        try:
            stack.enter_context(writer_lock(run_dir.absolute()))
        except IndexerError:
            try:
                holder = path.read_text(encoding="utf-8").strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise TrainingError(
                f"{run_dir} is being written by another training (pid {holder}, lock {path}); wait for it "
                "to end or choose another run_dir"
            ) from None
        path.write_text(f"{os.getpid()}\n", encoding="utf-8")
        yield


def save_last(
    path: Path,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    state: RunState,
    config: TrainConfig,
    runtime: Runtime,
    steps_per_epoch: int,
) -> None:
    """Write ``last.pt`` (a collective under DDP: every rank's RNG state is gathered to rank 0)."""
    from models import save_checkpoint

    rng_states = gather(runtime, rng_state())
    if not runtime.is_main:
        return
    training_state = {
        "step": state.step,
        "epoch": state.step // steps_per_epoch,
        "steps_per_epoch": steps_per_epoch,
        "world_size": runtime.world_size,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_states,
        "best": {"map_all": state.best_map, "step": state.best_step, "epoch": state.best_epoch},
        "validations": state.validations,
    }
    save_checkpoint(
        unwrap(objective),
        path,
        step=state.step,
        epoch=state.step // steps_per_epoch,
        training_config=config.to_dict(),
        training_state=training_state,
    )
    state.last_saved_step = state.step


def save_best(
    path: Path, objective: nn.Module, step: int, epoch: int, metrics: Mapping[str, Any], config: TrainConfig
) -> None:
    """Write ``best.pt``: the model with the validation metrics that made it the best."""
    from models import save_checkpoint

    save_checkpoint(
        unwrap(objective),
        path,
        step=step,
        epoch=epoch,
        map_all=metrics["map_all"],
        metrics=metrics,
        training_config=config.to_dict(),
    )


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted names of the settings that differ and may not change on resumption
    (:data:`RESUMABLE_CHANGES` and ``validation.*`` may)."""
    keys = sorted(set(saved) | set(current))
    differences = []
    for key in keys:
        name = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if key not in saved and new in (None, False):
            continue  # a setting newer than the interrupted run, left off: nothing computed changes
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences.extend(config_differences(old, new, f"{name}."))
        elif old != new and name not in RESUMABLE_CHANGES and not name.startswith("validation."):
            differences.append(name)
    return differences


def load_last(
    path: Path,
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    config: TrainConfig,
    runtime: Runtime,
    steps_per_epoch: int,
) -> RunState:
    """Put the saved model, optimizer, scheduler, scaler and RNG states back; return the run state.

    Raises:
        TrainingError: not a last checkpoint, or written by another number of processes or epoch length.
        ConfigError: the config differs in a setting that changes what is computed.
    """
    from models.checkpoint import load_state_strict, read_state

    payload = read_state(path)
    training_state = payload.get("training_state") if isinstance(payload, Mapping) else None
    if training_state is None:
        raise TrainingError(f"{path}: not a last checkpoint of a training run (no training state)")
    differences = config_differences(payload.get("training_config", {}), config.to_dict())
    if differences:
        raise ConfigError(
            f"resume: the config differs from the interrupted run's in {', '.join(differences)} "
            "(only run length, logging, device and data location may change)"
        )
    if (
        training_state["world_size"] != runtime.world_size
        or training_state["steps_per_epoch"] != steps_per_epoch
    ):
        raise TrainingError(
            f"{path}: written by {training_state['world_size']} process(es) with "
            f"{training_state['steps_per_epoch']} steps an epoch; resume with the same number of "
            "processes and data"
        )
    load_state_strict(unwrap(objective), payload["state_dict"], path)
    optimizer.load_state_dict(training_state["optimizer"])
    scheduler.load_state_dict(training_state["scheduler"])
    scaler.load_state_dict(training_state["scaler"])
    set_rng_state(training_state["rng"][runtime.rank])
    best = training_state["best"]
    return RunState(
        step=training_state["step"],
        best_map=best["map_all"],
        best_step=best["step"],
        best_epoch=best["epoch"],
        last_saved_step=training_state["step"],
        validations=list(training_state.get("validations", [])),
    )
