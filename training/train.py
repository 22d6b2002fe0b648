"""Training loops for ZSE-SBIR (triplets) and FFMLN/AMFF (class-balanced batches).

``train(config)`` runs one training: AdamW, optional warm-up/cosine schedule, mixed precision on
CUDA (torch.autocast + GradScaler), gradient clipping, periodic validation on the unseen classes
(mAP@all picks the best checkpoint), and resumption from the last checkpoint.

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

import dataclasses
import functools
import importlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from models.atomic import finite_or_none, write_json_atomic
from models.device import autocast, resolve_device
from models.errors import SbirError
from training.config import (
    ConfigError,
    TrainConfig,
    config_from_dict,
    load_config,
    model_config_with_overrides,
)
from training.data import (
    BalancedBatchDataset,
    StreamSampler,
    TripletDataset,
    instance_relevance_available,
    load_split,
)
from training.datasets import SplitData
from training.evaluate import FINE_GRAINED_DATASETS, evaluate_model

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]

LAST = "last.pt"
BEST = "best.pt"
METRICS_LOG = "metrics.jsonl"
# Settings that may change between an interrupted run and its resumption without changing what is
# computed (or that only lengthen the run).
_RESUMABLE_CHANGES = frozenset(
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
# Validation on rank 0 can take long (exhaustive relation scores); the other ranks wait at a barrier.
_DISTRIBUTED_TIMEOUT = timedelta(hours=3)


class TrainingError(SbirError, RuntimeError):
    """A run that cannot start or continue (nothing to resume, an incompatible checkpoint...)."""


# ----------------------------------------------------------------------------------------------
# Processes and randomness


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: rank and world size under torchrun, else a single process."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_process_group: bool = False  # joined here, so left here at the end of the run

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(device: str) -> Runtime:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Runtime(0, 1, 0, resolve_device(device))
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=_DISTRIBUTED_TIMEOUT)
    target = torch.device("cuda", local_rank) if use_cuda else resolve_device(device)
    return Runtime(rank, world_size, local_rank, target, owns)


def teardown_runtime(runtime: Runtime) -> None:
    if runtime.owns_process_group:
        import torch.distributed as dist

        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch, in types ``torch.load(weights_only=True)`` reads."""
    _, key, position, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": [int(k) for k in key],
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np.array(numpy_state["key"], dtype=np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather(runtime: Runtime, value: Any) -> list[Any]:
    """Every rank's ``value`` (a collective: all ranks call it), in rank order."""
    if not runtime.distributed:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def _mean_over_ranks(runtime: Runtime, values: Mapping[str, float]) -> dict[str, float]:
    """Each value averaged over ranks (a collective), for logging the global loss."""
    if not runtime.distributed:
        return dict(values)
    import torch.distributed as dist

    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=runtime.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return {key: value / runtime.world_size for key, value in zip(values, tensor.tolist(), strict=True)}


def _any_rank(runtime: Runtime, *flags: bool) -> list[bool]:
    """Each flag OR-ed over ranks (one small all-reduce), so every rank takes the same branch."""
    if not runtime.distributed:
        return list(flags)
    import torch.distributed as dist

    tensor = torch.tensor([float(flag) for flag in flags], device=runtime.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return [bool(value) for value in tensor.tolist()]


# ----------------------------------------------------------------------------------------------
# Model, objective, data


class ZSEObjective(nn.Module):
    """The ZSE-SBIR loss of a batch of triplets (a module so that DDP sees the forward pass).

    forward(sketch, positive, negative [B, 3, S, S]) -> (total, {"triplet", "relation"[, "ret"]}).
    """

    def __init__(
        self, model: nn.Module, margin: float, triplet_weight: float, relation_weight: float,
        ret_weight: float = 0.0, ret_margin: float = 0.2,
    ) -> None:
        super().__init__()
        self.model = model
        self.margin, self.triplet_weight, self.relation_weight = margin, triplet_weight, relation_weight
        self.ret_weight, self.ret_margin = ret_weight, ret_margin

    def forward(self, sketch: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> Any:
        from models.zse_loss import zse_loss

        out = self.model.training_forward(sketch, positive, negative)  # type: ignore[operator]
        return zse_loss(out, self.margin, self.triplet_weight, self.relation_weight, self.ret_weight,
                        self.ret_margin)


class AMFFObjective(nn.Module):
    """The FFMLN loss of a class-balanced batch; sketches and photos go through the one network together.

    forward(sketches [N, 3, S, S], sketch_labels [N], photos [M, 3, S, S], photo_labels [M])
    -> (total, {"norm", "cls", "sin", "mul", "cro", "total"}).
    """

    def __init__(self, model: nn.Module, lam: float, margin: float, mining: Literal["hard", "all"]) -> None:
        super().__init__()
        self.model = model
        self.lam, self.margin = lam, margin
        self.mining: Literal["hard", "all"] = mining

    def forward(
        self,
        sketches: torch.Tensor,
        sketch_labels: torch.Tensor,
        photos: torch.Tensor,
        photo_labels: torch.Tensor,
    ) -> Any:
        from models.ffmln_loss import ffmln_loss

        embeddings = self.model.encode(torch.cat([sketches, photos])).ret  # type: ignore[operator]
        count = sketches.shape[0]
        return ffmln_loss(
            self.model,
            embeddings[:count],
            sketch_labels,
            embeddings[count:],
            photo_labels,
            lam=self.lam,
            margin=self.margin,
            mining=self.mining,
        )


def build_training_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The model to train: the preset with overrides (AMFF: ``num_classes`` seen classes), or the
    weights of ``model.init_checkpoint``."""
    import models

    model_config = model_config_with_overrides(config.model.name, config.model.overrides)
    if config.family == "amff":
        model_config = dataclasses.replace(model_config, num_classes=num_classes)
    if config.model.init_checkpoint is None:
        return models.build_model(model_config)
    initial = models.load_checkpoint(config.model.init_checkpoint)
    if getattr(initial, "family", None) != config.family:
        raise ConfigError(
            f"model.init_checkpoint: a {getattr(initial, 'family', '?')} checkpoint, "
            f"but model.name is {config.family}"
        )
    if config.family == "amff" and initial.config.num_classes != num_classes:  # type: ignore[union-attr]
        # The seen classes of the new data decide the classifier and proxies; the rest is kept.
        model = models.build_model(
            dataclasses.replace(initial.config, num_classes=num_classes), pretrained=False
        )
        state = {
            k: v for k, v in initial.state_dict().items() if not k.startswith(("classifier.", "proxies"))
        }
        model.load_state_dict(state, strict=False)
        return model
    return initial.train()


def resolve_augment(spec: str | None, options: Mapping[str, Any]) -> Callable[..., Any] | None:
    """``"package.module:name"`` -> the sketch augmentation (a class is built with ``options``).

    Raises:
        ConfigError: naming ``data.sketch_augment`` (not importable, not callable, bad options).
    """
    if spec is None:
        if options:
            raise ConfigError("data.sketch_augment_options: given without data.sketch_augment")
        return None
    module_name, _, attribute = spec.partition(":")
    try:
        augment = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(f"data.sketch_augment: cannot import {spec!r} ({error})") from None
    if isinstance(augment, type):
        try:
            augment = augment(**options)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"data.sketch_augment_options: {spec} refuses them ({error})") from None
    elif options:
        raise ConfigError(
            f"data.sketch_augment_options: {spec!r} is not a class; options apply to classes only"
        )
    if not callable(augment):
        raise ConfigError(f"data.sketch_augment: {spec!r} is not callable")
    return augment


@dataclass
class TrainingData:
    """The training loader and what the loop needs to know about it."""

    train: SplitData
    validation: SplitData | None
    dataset: TripletDataset | BalancedBatchDataset
    sampler: StreamSampler
    loader: DataLoader
    steps_per_epoch: int
    items_per_step: int  # per process, in sampler indices: triplets (ZSE) or batches (AMFF, 1)
    images_per_step: int  # per process


def build_data(config: TrainConfig, runtime: Runtime) -> TrainingData:
    """Read the splits (refusing too many missing files) and build the loader of this process."""
    data = config.data
    load = functools.partial(
        load_split,
        data.dataset,
        data.root,
        unseen=data.unseen,
        unseen_fraction=data.unseen_fraction,
        split_seed=data.split_seed,
        max_missing_fraction=data.max_missing_fraction,
    )
    train_split = load("train")
    validation = None
    if config.validation.enabled:
        validation = load("zero", quick=config.validation.quick)
    augment = resolve_augment(data.sketch_augment, data.sketch_augment_options)
    image_size = int(model_config_with_overrides(config.model.name, config.model.overrides).image_size)
    world = runtime.world_size
    dataset: TripletDataset | BalancedBatchDataset
    if config.family == "zse":
        batch = config.zse_settings.batch_size
        epoch_size = config.schedule.epoch_size or _zse_epoch_size()
        steps = epoch_size // (batch * world)
        _check_steps(steps, epoch_size, batch * world)
        dataset = TripletDataset(train_split, steps * batch * world, config.seed, augment, image_size,
                                 positive=config.zse_settings.positive)
        sampler = StreamSampler(len(dataset), runtime.rank, world)
        loader = DataLoader(
            dataset, batch_size=batch, sampler=sampler, drop_last=True, **_loader_options(config, runtime)
        )
        items_per_step, images_per_step = batch, 3 * batch
    else:
        amff = config.amff_settings
        per_batch = amff.classes_per_batch * amff.samples_per_class
        epoch_size = config.schedule.epoch_size or len(train_split.sketches)
        steps = max(1, epoch_size // (per_batch * world))
        dataset = BalancedBatchDataset(
            train_split,
            steps * world,
            config.seed,
            amff.classes_per_batch,
            amff.samples_per_class,
            augment,
            image_size,
        )
        sampler = StreamSampler(len(dataset), runtime.rank, world)
        loader = DataLoader(dataset, batch_size=None, sampler=sampler, **_loader_options(config, runtime))
        items_per_step, images_per_step = 1, 2 * per_batch
    return TrainingData(
        train_split, validation, dataset, sampler, loader, steps, items_per_step, images_per_step
    )


def _zse_epoch_size() -> int:
    from training.config import ZSE_EPOCH_SIZE

    return ZSE_EPOCH_SIZE


def _check_steps(steps: int, epoch_size: int, global_batch: int) -> None:
    if steps < 1:
        raise ConfigError(
            f"schedule.epoch_size: {epoch_size} items is less than one step "
            f"of {global_batch} (batch x processes)"
        )


def _loader_options(config: TrainConfig, runtime: Runtime) -> dict[str, Any]:
    workers = config.data.num_workers
    return {
        "num_workers": workers,
        "pin_memory": runtime.device.type == "cuda",
        # Its own generator: creating an iterator then draws nothing from torch's global RNG, whose
        # state is saved for exact resumption (the items themselves are seeded per index).
        "generator": torch.Generator(),
        "persistent_workers": False,  # workers must see set_epoch(), which a fresh iterator picks up
        "prefetch_factor": 2 if workers > 0 else None,
    }


# ----------------------------------------------------------------------------------------------
# Optimisation


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.AdamW:
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    betas = (config.optim.betas[0], config.optim.betas[1])
    return torch.optim.AdamW(
        trainable,
        lr=config.optim.lr,
        betas=betas,
        eps=config.optim.eps,
        weight_decay=config.resolved_weight_decay,
    )


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
    warmup = config.optim.warmup_steps
    cosine = config.optim.scheduler == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class StepResult:
    loss: float
    parts: dict[str, float]
    grad_norm: float | None
    finite: bool


def _batch_inputs(
    family: str, batch: Mapping[str, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, ...]:
    def move(key: str) -> torch.Tensor:
        return batch[key].to(device, non_blocking=True)

    if family == "zse":
        return move("sketch"), move("positive"), move("negative")
    return move("sketches"), move("sketch_labels"), move("photos"), move("photo_labels")


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
    amp = config.amp and runtime.device.type == "cuda"
    dtype = torch.float16 if config.amp_dtype == "float16" else torch.bfloat16
    with autocast(runtime.device, dtype if amp else None):
        loss, parts = objective(*inputs)
    loss_value = float(loss.detach())
    (non_finite,) = _any_rank(runtime, not math.isfinite(loss_value))
    part_values = {name: float(value.detach()) for name, value in parts.items() if name != "total"}
    if non_finite:
        optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_value, part_values, None, False)
    scaler.scale(loss).backward()
    grad_norm = None
    if config.optim.grad_clip_norm is not None:
        scaler.unscale_(optimizer)
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, config.optim.grad_clip_norm))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return StepResult(loss_value, part_values, grad_norm, True)


# ----------------------------------------------------------------------------------------------
# Logging


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
        if self.stream is None:
            return
        record = finite_or_none({"time": time.time(), **record})  # strict JSON: NaN -> null
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()
        if self.writer is not None and "step" in record:
            for key, value in _flatten(record).items():
                if isinstance(value, int | float) and key not in ("time", "step", "epoch"):
                    self.writer.add_scalar(f"{record.get('event', 'train')}/{key}", value, record["step"])

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        if self.writer is not None:
            self.writer.close()


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _progress_bar(config: TrainConfig, runtime: Runtime, total: int, initial: int) -> Any:
    from tqdm import tqdm

    show = config.progress_bar if config.progress_bar is not None else sys.stderr.isatty()
    return tqdm(
        total=total, initial=initial, disable=not (show and runtime.is_main), unit="step", dynamic_ncols=True
    )


# ----------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class RunState:
    """What the loop carries between steps and through a resumption."""

    step: int = 0
    best_map: float | None = None
    best_step: int | None = None
    best_epoch: int | None = None
    last_saved_step: int | None = None
    validations: list[dict[str, Any]] = field(default_factory=list)


def _unwrap(objective: nn.Module) -> nn.Module:
    """The model inside an objective, itself possibly inside DistributedDataParallel."""
    inner: Any = getattr(objective, "module", objective)
    return inner.model


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

    rng_states = _gather(runtime, rng_state())
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
        _unwrap(objective),
        path,
        step=state.step,
        epoch=state.step // steps_per_epoch,
        training_config=config.to_dict(),
        training_state=training_state,
    )
    state.last_saved_step = state.step


def _config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(saved) | set(current))
    differences = []
    for key in keys:
        name = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences.extend(_config_differences(old, new, f"{name}."))
        elif old != new and name not in _RESUMABLE_CHANGES and not name.startswith("validation."):
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
    """Put the saved model, optimizer, scheduler, scaler and RNG states back; return the run state."""
    from models.checkpoint import load_state_strict, read_state

    payload = read_state(path)
    training_state = payload.get("training_state") if isinstance(payload, Mapping) else None
    if training_state is None:
        raise TrainingError(f"{path}: not a last checkpoint of a training run (no training state)")
    differences = _config_differences(payload.get("training_config", {}), config.to_dict())
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
    load_state_strict(_unwrap(objective), payload["state_dict"], path)
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


# ----------------------------------------------------------------------------------------------
# Validation


def validate(
    objective: nn.Module, data: TrainingData, config: TrainConfig, runtime: Runtime
) -> dict[str, Any] | None:
    """Rank 0 measures the unseen split (the others wait); returns the metrics on rank 0, else None."""
    result = None
    if runtime.is_main and data.validation is not None:
        dataset = config.data.dataset
        result = evaluate_model(
            _unwrap(objective),
            data.validation,
            retrieval=config.validation.retrieval,
            fine_grained=dataset in FINE_GRAINED_DATASETS,
            instance=instance_relevance_available(dataset, data.validation)
            and dataset not in FINE_GRAINED_DATASETS,
            batch_size=config.validation.batch_size,
            device=runtime.device,
            amp=config.amp,
            num_workers=config.data.num_workers,
        )
    if runtime.distributed:
        import torch.distributed as dist

        dist.barrier()
    return result


def _validation_due(config: TrainConfig, step: int, steps_per_epoch: int, total_steps: int) -> bool:
    if not config.validation.enabled:
        return False
    if step == total_steps:
        return True  # always measure the final weights
    if step % steps_per_epoch:
        return False
    epoch = step // steps_per_epoch  # 1-based number of the epoch just finished
    start, every = config.validation.from_epoch, config.validation.every_epochs
    return epoch >= start and (epoch - start) % every == 0


# ----------------------------------------------------------------------------------------------
# The run


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
    run_dir = Path(config.run_dir)
    last_path = run_dir / "checkpoints" / LAST
    if config.resume and not last_path.is_file():
        raise TrainingError(f"nothing to resume: {last_path} does not exist")
    if not config.resume and last_path.is_file():
        raise TrainingError(
            f"{run_dir} already holds a run ({last_path}); resume it or choose another run_dir"
        )

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
    checkpoints = run_dir / "checkpoints"
    last_path, best_path = checkpoints / LAST, checkpoints / BEST
    seed_everything(config.seed + runtime.rank)  # ranks differ in dropout; the data are seeded per item
    data = build_data(config, runtime)
    model = build_training_model(config, num_classes=len(data.train.classes)).to(runtime.device)
    model.train()
    objective = _objective(config, model)
    if config.family == "amff" and config.amff_settings.freeze_classifier:
        from models.ffmln_loss import freeze_classifier

        freeze_classifier(model)
    if runtime.distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [runtime.local_rank] if runtime.device.type == "cuda" else None
        objective = DistributedDataParallel(objective, device_ids=device_ids)
    total_steps = data.steps_per_epoch * config.schedule.epochs
    if config.schedule.max_steps is not None:
        total_steps = min(total_steps, config.schedule.max_steps)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer, total_steps)
    use_scaler = config.amp and runtime.device.type == "cuda" and config.amp_dtype == "float16"
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=use_scaler)

    state = RunState()
    if config.resume:
        state = load_last(
            last_path, objective, optimizer, scheduler, scaler, config, runtime, data.steps_per_epoch
        )
    start_step = state.step
    if runtime.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "config.json", {**config.to_dict(), "resolved": _resolved(config, data)}, sort_keys=False)
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
                objective,
                _batch_inputs(config.family, batch, runtime.device),
                optimizer,
                scaler,
                scheduler,
                config,
                runtime,
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
                averaged = _mean_over_ranks(runtime, {"loss": result.loss, **result.parts})
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
            if _validation_due(config, state.step, data.steps_per_epoch, total_steps):
                validation_started = time.perf_counter()
                _validate_and_keep_best(
                    objective, data, config, runtime, state, best_path, log, progress, total_steps
                )
                validation_seconds += time.perf_counter() - validation_started
            if epoch_end or state.step % config.schedule.checkpoint_every == 0:
                save()
                saved = True
            (stop,) = _any_rank(runtime, bool(should_stop is not None and runtime.is_main and should_stop()))
            if stop and state.step < total_steps:
                if not saved:
                    save()
                status, message = "stopped", f"stopped at step {state.step}; resume to continue"
                break
    finally:
        bar.close()
        iterator = None

    if status == "completed":
        message = f"trained {state.step - start_step} steps ({state.step}/{total_steps})"
    report = _report(
        config,
        data,
        state,
        status,
        message,
        start_step,
        total_steps,
        final_loss,
        runtime,
        last_path,
        best_path,
        {
            "total_s": time.perf_counter() - started,
            "train_s": train_seconds,
            "validation_s": validation_seconds,
        },
    )
    log.write({"event": "end", "step": state.step, "status": status, "message": message})
    log.close()
    if runtime.is_main:
        write_json_atomic(run_dir / "report.json", report, sort_keys=False)
    return report


def _objective(config: TrainConfig, model: nn.Module) -> nn.Module:
    if config.family == "zse":
        zse = config.zse_settings
        return ZSEObjective(model, zse.triplet_margin, zse.triplet_weight, zse.relation_weight, zse.ret_weight,
                            zse.ret_margin)
    amff = config.amff_settings
    return AMFFObjective(model, amff.lam, amff.margin, amff.mining)


def _validate_and_keep_best(
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
    from models import save_checkpoint

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
        save_checkpoint(
            _unwrap(objective),
            best_path,
            step=state.step,
            epoch=math.ceil(epoch),
            map_all=map_all,
            metrics=result["metrics"],
            training_config=config.to_dict(),
        )
        record["best"] = True
    state.validations.append({"step": state.step, "epoch": epoch, "metrics": result["metrics"]})
    log.write(record)
    if progress is not None:
        progress(state.step / total_steps, f"validation at step {state.step}: mAP@all {map_all:.4f}")


def _resolved(config: TrainConfig, data: TrainingData) -> dict[str, Any]:
    return {
        "family": config.family,
        "weight_decay": config.resolved_weight_decay,
        "steps_per_epoch": data.steps_per_epoch,
        "items_per_step": config.items_per_step,
    }


def _report(
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
) -> dict[str, Any]:
    def sizes(split: SplitData | None) -> dict[str, int] | None:
        if split is None:
            return None
        return {
            "sketches": len(split.sketches),
            "photos": len(split.photos),
            "classes": len(split.classes),
            "missing_files": split.missing.count if split.missing else 0,
        }

    return {
        "status": status,
        "message": message,
        "run_dir": str(config.run_dir),
        "family": config.family,
        "model": config.model.name,
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
        "data": {"train": sizes(data.train), "validation": sizes(data.validation)},
        "metrics_log": str(Path(config.run_dir) / METRICS_LOG),
        "timings": timings,
        "config": {**config.to_dict(), "resolved": _resolved(config, data)},
    }
