"""Training loops for ZSE-SBIR (triplets) and FFMLN/AMFF (class-balanced batches).

``train(config)`` runs one training: AdamW, optional warm-up/cosine schedule, mixed precision on
CUDA (torch.autocast + GradScaler), gradient clipping, periodic validation on the unseen classes
(mAP@all picks the best checkpoint), and resumption from the last checkpoint.

This module is the loop; each of its parts has one owner:

    training.runtime        process group (torchrun), seeds, RNG states, collectives
    training.families       what differs between the families (model, objective, items, inputs)
    training.objectives     the loss modules
    training.loaders        splits, augmentation, sampler and DataLoader
    training.optim          optimiser, schedule, mixed-precision policy
    training.metrics_log    metrics.jsonl (and TensorBoard)
    training.checkpointing  last.pt / best.pt and resumption
    training.report         validation and the report

Files in ``run_dir``::

    config.json             the resolved configuration
    checkpoints/last.pt     model + training state (optimizer, scheduler, scaler, step, RNG states)
    checkpoints/best.pt     the best validated model so far (this project's format)
    metrics.jsonl           one JSON record a line: train (loss parts, lr, images/s), validation, events
    tensorboard/            the same scalars, when the tensorboard package is installed
    report.json             what ``train`` returns

Exact resumption. Every random draw of a training item depends only on (seed, epoch, index)
(see :mod:`training.data`); the sampler restarts at the interrupted position; the RNG states of
python, numpy, torch (CPU and CUDA) of every process are saved with the last checkpoint and put
back. Interrupting after step n and resuming therefore gives the same step n + 1 batch, the same
dropout masks and, on the CPU, the same final weights as an uninterrupted run.

Several GPUs: launched by ``torchrun --nproc_per_node=N -m service.cli train --config ...``
(``WORLD_SIZE`` > 1), each process takes its share of every epoch's items (batch size is per
process), gradients are averaged by DistributedDataParallel, and only rank 0 validates and writes.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.atomic import write_json_atomic
from models.device import autocast
from training.checkpointing import (
    RunState,
    TrainingError,
    check_can_start,
    checkpoint_paths,
    load_last,
    run_lock,
    save_last,
)
from training.config import TrainConfig, config_from_dict, load_config
from training.datasets import format_names
from training.families import build_training_model, load_initial, recipe_for
from training.loaders import build_data
from training.metrics_log import MetricsLog
from training.optim import autocast_dtype, build_optimizer, build_scaler, build_scheduler
from training.report import Progress, build_report, resolved, validate_and_keep_best, validation_due
from training.runtime import (
    Runtime,
    any_rank,
    mean_over_ranks,
    seed_everything,
    setup_runtime,
    teardown_runtime,
)

__all__ = ["Progress", "ShouldStop", "StepResult", "TrainingError", "train", "train_step"]

ShouldStop = Callable[[], bool]


@dataclass
class StepResult:
    """One step's loss, its parts (the total left out), the gradient norm when clipped, and
    whether the loss was finite on every rank (else the update was skipped)."""

    loss: float
    parts: dict[str, float]
    grad_norm: float | None
    finite: bool


def train_step(
    objective: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    scheduler: Any,
    config: TrainConfig,
    runtime: Runtime,
) -> StepResult:
    """One optimisation step. A non-finite loss on any rank skips the update on every rank."""
    with autocast(runtime.device, autocast_dtype(config, runtime.device)):
        loss, parts = objective(*inputs)
    loss_value = float(loss.detach())
    (non_finite,) = any_rank(runtime, not math.isfinite(loss_value))
    part_values = {name: float(value.detach()) for name, value in parts.items() if name != "total"}
    if non_finite:
        optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_value, part_values, None, False)
    scaler.scale(loss).backward()
    grad_norm = None
    if config.optim.grad_clip_norm is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the float16-scaled ones
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, config.optim.grad_clip_norm))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return StepResult(loss_value, part_values, grad_norm, True)


def _progress_bar(config: TrainConfig, runtime: Runtime, total: int, initial: int) -> Any:
    from tqdm import tqdm

    show = config.progress_bar if config.progress_bar is not None else sys.stderr.isatty()
    return tqdm(
        total=total, initial=initial, disable=not (show and runtime.is_main), unit="step", dynamic_ncols=True
    )


def _as_config(config: TrainConfig | Mapping[str, Any] | str | os.PathLike[str]) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, Mapping):
        return config_from_dict(config)
    return load_config(config)


def train(
    config: TrainConfig | Mapping[str, Any] | str | os.PathLike[str],
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> dict[str, Any]:
    """Train (or resume, with ``config.resume``); return the report, also written to ``run_dir/report.json``.

    Args:
        config: a :class:`TrainConfig`, a mapping of settings, or a YAML / JSON file.
        progress: called on rank 0 with (fraction of the steps done, message) after each logged step
            and validation.
        should_stop: polled after every step (rank 0's answer counts); True saves the last checkpoint
            and returns with status ``"stopped"``; ``resume`` continues from there.

    Returns:
        ``{"status": "completed" | "stopped" | "diverged", "message", "step", "start_step", "total_steps",
        "steps_per_epoch", "last_checkpoint", "best_checkpoint", "best", "last_validation",
        "final_loss", "data", "timings", "run_dir", "metrics_log", "config", ...}``. ``diverged``: a
        non-finite loss stopped the run before its update; the last checkpoint on disk is the last
        good one (it is not overwritten).

    Raises:
        ConfigError, training.datasets.DatasetError (e.g. too many missing files), TrainingError,
        before the first step.
    """
    config = _as_config(config)
    started = time.perf_counter()
    # Under torchrun every rank shares run_dir; rank 0 writes it, so rank 0 holds its lock.
    lock: AbstractContextManager[None] = run_lock(Path(config.run_dir)) if int(os.environ.get("RANK", "0")) == 0 else nullcontext()
    with lock:
        check_can_start(config)
        runtime = setup_runtime(config.device)
        try:
            return _run(config, runtime, progress, should_stop, started)
        finally:
            teardown_runtime(runtime)


def _run(
    config: TrainConfig,
    runtime: Runtime,
    progress: Progress | None,
    should_stop: ShouldStop | None,
    started: float,
) -> dict[str, Any]:
    """The body of :func:`train`, once the process group (if any) is joined."""
    run_dir = Path(config.run_dir)
    last_path, best_path = checkpoint_paths(run_dir)
    recipe = recipe_for(config.family)
    initial = load_initial(config, recipe)  # a wrong init checkpoint fails before the data are read
    seed_everything(config.seed + runtime.rank)  # ranks differ in dropout; the data are seeded per item
    data = build_data(config, recipe, runtime)
    if runtime.is_main and data.validation is not None:
        classes = data.validation.classes
        print(f"validation: {len(classes)} held-out (unseen) classes: {format_names(classes)}", file=sys.stderr)
    model = build_training_model(config, recipe, len(data.train.classes), initial).to(runtime.device)
    del initial
    model.train()
    objective = recipe.objective(config, model)
    recipe.freeze(config, model)
    if runtime.distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [runtime.local_rank] if runtime.device.type == "cuda" else None
        objective = DistributedDataParallel(objective, device_ids=device_ids)
    total_steps = data.steps_per_epoch * config.schedule.epochs
    if config.schedule.max_steps is not None:
        total_steps = min(total_steps, config.schedule.max_steps)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, total_steps)
    scaler = build_scaler(config, runtime.device)

    state = RunState()
    if config.resume:
        state = load_last(
            last_path, objective, optimizer, scheduler, scaler, config, runtime, data.steps_per_epoch
        )
    start_step = state.step
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            run_dir / "config.json", {**config.to_dict(), "resolved": resolved(config, data)}, sort_keys=False
        )
    log = MetricsLog(run_dir, runtime.is_main, config.tensorboard)
    log.write(
        {
            "event": "resume" if config.resume else "start",
            "step": start_step,
            "total_steps": total_steps,
            "world_size": runtime.world_size,
            "device": str(runtime.device),
        }
    )
    bar = _progress_bar(config, runtime, total_steps, start_step)

    def save() -> None:
        save_last(last_path, objective, optimizer, scheduler, scaler, state, config, runtime,
                  data.steps_per_epoch)

    status, message, final_loss = "completed", "", None
    train_seconds = validation_seconds = 0.0
    window_started, window_images = time.perf_counter(), 0
    iterator = None
    try:
        while state.step < total_steps:
            if iterator is None:
                epoch = state.step // data.steps_per_epoch
                data.dataset.set_epoch(epoch)
                offset = state.step - epoch * data.steps_per_epoch
                data.sampler.set_start(offset * data.items_per_step * runtime.world_size)
                iterator = iter(data.loader)
            step_started = time.perf_counter()
            batch = next(iterator)
            result = train_step(
                objective, recipe.inputs(batch, runtime.device), optimizer, scaler, scheduler, config, runtime
            )
            train_seconds += time.perf_counter() - step_started
            if not result.finite:
                status = "diverged"
                kept = (
                    f"the last good checkpoint is {last_path} (step {state.last_saved_step})"
                    if state.last_saved_step is not None
                    else "no checkpoint was saved before it"
                )
                message = f"non-finite loss ({result.loss}) at step {state.step + 1}; {kept}"
                log.write(
                    {
                        "event": "diverged",
                        "step": state.step + 1,
                        "loss": result.loss,
                        "loss_text": str(result.loss),
                        "parts": result.parts,
                    }
                )
                break
            state.step += 1
            final_loss = result.loss
            window_images += data.images_per_step * runtime.world_size
            bar.update(1)
            if state.step % config.schedule.log_every == 0 or state.step == total_steps:
                elapsed = time.perf_counter() - window_started
                averaged = mean_over_ranks(runtime, {"loss": result.loss, **result.parts})
                loss = averaged.pop("loss")
                record = {
                    "event": "train",
                    "step": state.step,
                    "epoch": state.step / data.steps_per_epoch,
                    "loss": loss,
                    "parts": averaged,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": result.grad_norm,
                    "images_per_s": window_images / max(elapsed, 1e-9),
                }
                log.write(record)
                bar.set_postfix(loss=f"{loss:.4f}")
                window_started, window_images = time.perf_counter(), 0
                if progress is not None and runtime.is_main:
                    progress(state.step / total_steps, f"step {state.step}/{total_steps} loss {loss:.4f}")

            saved = False
            epoch_end = state.step % data.steps_per_epoch == 0 or state.step == total_steps
            if epoch_end:
                iterator = None
            if validation_due(config, state.step, data.steps_per_epoch, total_steps):
                validation_started = time.perf_counter()
                validate_and_keep_best(
                    objective, data, config, runtime, state, best_path, log, progress, total_steps
                )
                validation_seconds += time.perf_counter() - validation_started
            if epoch_end or state.step % config.schedule.checkpoint_every == 0:
                save()
                saved = True
            (stop,) = any_rank(runtime, bool(should_stop is not None and runtime.is_main and should_stop()))
            if stop and state.step < total_steps:
                if not saved:
                    save()
                status, message = "stopped", f"stopped at step {state.step}; resume to continue"
                break
    except KeyboardInterrupt:
        # Not saved here: a step cut in the middle would break exact resumption; the last checkpoint stands.
        log.write({"event": "interrupted", "step": state.step, "last_checkpoint_step": state.last_saved_step})
        log.close()
        raise
    finally:
        bar.close()
        iterator = None

    if status == "completed":
        message = f"trained {state.step - start_step} steps ({state.step}/{total_steps})"
    timings = {
        "total_s": time.perf_counter() - started,
        "train_s": train_seconds,
        "validation_s": validation_seconds,
    }
    report = build_report(
        config, data, state, status, message, start_step, total_steps, final_loss, runtime, last_path,
        best_path, timings, model_name=str(getattr(model.config, "name", config.model.name)),
    )
    log.write({"event": "end", "step": state.step, "status": status, "message": message})
    log.close()
    if runtime.is_main:
        write_json_atomic(run_dir / "report.json", report, sort_keys=False)
    return report
