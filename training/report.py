"""Validation during training and the final report of a run.

Rank 0 measures the unseen classes (:func:`training.evaluate.evaluate_model`) at the epochs the
config names and after the last step; mAP@all picks ``best.pt``. The report is what
:func:`training.train.train` returns and writes to ``run_dir/report.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from training.checkpointing import RunState, save_best
from training.config import TrainConfig
from training.data import instance_relevance_available
from training.datasets import SplitData, held_out_problem
from training.evaluate import FINE_GRAINED_DATASETS, evaluate_model
from training.loaders import TrainingData
from training.metrics_log import METRICS_LOG, MetricsLog
from training.objectives import unwrap
from training.runtime import Runtime, barrier

Progress = Callable[[float, str], None]


def validate(
    objective: nn.Module, data: TrainingData, config: TrainConfig, runtime: Runtime
) -> dict[str, Any] | None:
    """Rank 0 measures the unseen split (the others wait); returns the metrics on rank 0, else None."""
    result = None
    if runtime.is_main and data.validation is not None:
        dataset = config.data.dataset
        result = evaluate_model(
            unwrap(objective),
            data.validation,
            retrieval=config.validation.retrieval,
            fine_grained=dataset in FINE_GRAINED_DATASETS,
            instance=instance_relevance_available(dataset, data.validation)
            and dataset not in FINE_GRAINED_DATASETS,
            batch_size=config.validation.batch_size,
            device=runtime.device,
            amp=config.amp,
            num_workers=config.num_workers,
        )
    barrier(runtime)
    return result


def validation_due(config: TrainConfig, step: int, steps_per_epoch: int, total_steps: int) -> bool:
    """Whether to validate after ``step``: at the end of epochs ``from_epoch``, ``from_epoch +
    every_epochs``, ... (1-based), and always after the last step."""
    if not config.validation.enabled:
        return False
    if step == total_steps:
        return True  # always measure the final weights
    if step % steps_per_epoch:
        return False
    epoch = step // steps_per_epoch  # 1-based number of the epoch just finished
    start, every = config.validation.from_epoch, config.validation.every_epochs
    return epoch >= start and (epoch - start) % every == 0


def validate_and_keep_best(
    objective: nn.Module,
    data: TrainingData,
    config: TrainConfig,
    runtime: Runtime,
    state: RunState,
    best_path: Path,
    log: MetricsLog,
    progress: Progress | None,
    total_steps: int,
) -> None:
    """Validate (a collective), log the metrics, and write ``best.pt`` when mAP@all improved."""
    result = validate(objective, data, config, runtime)
    if result is None:
        return
    epoch = state.step / data.steps_per_epoch
    map_all = result["metrics"]["map_all"]
    record = {
        "event": "validation",
        "step": state.step,
        "epoch": epoch,
        "retrieval": config.validation.retrieval,
        "metrics": result["metrics"],
        "metrics_standard": result["metrics_standard"],
        "seconds": sum(result["timings"].values()),
    }
    improved = math.isfinite(map_all) and (state.best_map is None or map_all > state.best_map)
    if improved:
        state.best_map, state.best_step, state.best_epoch = map_all, state.step, math.ceil(epoch)
        save_best(best_path, objective, state.step, math.ceil(epoch), result["metrics"], config)
        record["best"] = True
    state.validations.append({"step": state.step, "epoch": epoch, "metrics": result["metrics"]})
    log.write(record)
    if progress is not None:
        progress(state.step / total_steps, f"validation at step {state.step}: mAP@all {map_all:.4f}")


def resolved(config: TrainConfig, data: TrainingData) -> dict[str, Any]:
    """The values the config leaves to the family and the data, as the run used them."""
    return {
        "family": config.family,
        "weight_decay": config.resolved_weight_decay,
        "steps_per_epoch": data.steps_per_epoch,
        "items_per_step": config.items_per_step,
    }


def _sizes(split: SplitData | None) -> dict[str, int] | None:
    if split is None:
        return None
    return {
        "sketches": len(split.sketches),
        "photos": len(split.photos),
        "classes": len(split.classes),
        "missing_files": split.missing.count if split.missing else 0,
    }


def build_report(
    config: TrainConfig,
    data: TrainingData,
    state: RunState,
    status: str,
    message: str,
    start_step: int,
    total_steps: int,
    final_loss: float | None,
    runtime: Runtime,
    last_path: Path,
    best_path: Path,
    timings: dict[str, float],
    *,
    model_name: str | None = None,
) -> dict[str, Any]:
    """The report of a run (see :func:`training.train.train` for its keys). ``model``: the name of the
    model trained (``model_name``, the checkpoint's when fine-tuning), else ``model.name``."""
    warnings = []
    if data.validation is not None and held_out_problem(data.validation) is not None:
        warnings.append(f"validation.allow_small_split: {held_out_problem(data.validation)}; "
                        "the validation figures and best.pt mean little")
    return {
        "status": status,
        "message": message,
        "run_dir": str(config.run_dir),
        "family": config.family,
        "model": model_name or config.model.name,
        "step": state.step,
        "start_step": start_step,
        "total_steps": total_steps,
        "steps_per_epoch": data.steps_per_epoch,
        "epochs_done": state.step / data.steps_per_epoch,
        "world_size": runtime.world_size,
        "rank": runtime.rank,
        "device": str(runtime.device),
        "last_checkpoint": str(last_path) if last_path.is_file() else None,
        "last_checkpoint_step": state.last_saved_step,
        "best_checkpoint": str(best_path) if best_path.is_file() else None,
        "best": {"map_all": state.best_map, "step": state.best_step, "epoch": state.best_epoch},
        "last_validation": state.validations[-1] if state.validations else None,
        "final_loss": final_loss,
        "data": {"train": _sizes(data.train), "validation": _sizes(data.validation),
                 "held_out_classes": list(data.validation.classes) if data.validation is not None else None},
        "warnings": warnings,
        "metrics_log": str(Path(config.run_dir) / METRICS_LOG),
        "timings": timings,
        "config": {**config.to_dict(), "resolved": resolved(config, data)},
    }
